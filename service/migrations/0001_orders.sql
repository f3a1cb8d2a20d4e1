-- Orders, their items, the history of their versions, and the outbox of events to publish.

CREATE TABLE orders (
    id              BIGSERIAL      PRIMARY KEY,
    client_id       BIGINT         NOT NULL CHECK (client_id > 0),
    status          TEXT           NOT NULL CHECK (status IN ('CREATED', 'PAID', 'BOXING', 'WAIT_FOR_PICKUP',
                                       'IN_DELIVERY', 'WAIT_FOR_CLIENT', 'COMPLETED', 'CANCELLED')),
    currency_code   CHAR(3)        NOT NULL,
    -- Exact money: up to 19 integer digits (google.type.Money's int64 units) and 9 decimals (its nanos).
    amount          NUMERIC(28, 9) NOT NULL CHECK (amount >= 0),
    -- 1 at creation; every change increments it in the same transaction.
    version         BIGINT         NOT NULL DEFAULT 1 CHECK (version > 0),
    idempotency_key TEXT           UNIQUE,
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ    NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
    order_id BIGINT         NOT NULL REFERENCES orders (id),
    position INT            NOT NULL,
    sku_id   BIGINT         NOT NULL CHECK (sku_id > 0),
    quantity INT            NOT NULL CHECK (quantity > 0),
    price    NUMERIC(28, 9) NOT NULL CHECK (price >= 0),
    PRIMARY KEY (order_id, position)
);

-- One row per committed version of an order: the audit trail the consistency harness checks against the
-- state machine and against the topic.
CREATE TABLE order_versions (
    order_id   BIGINT      NOT NULL REFERENCES orders (id),
    version    BIGINT      NOT NULL,
    status     TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (order_id, version)
);

-- The transactional outbox: written in the transaction of the change, deleted by the relay once Kafka
-- acknowledged the event. `payload` is the encoded orders.v1.OrderEvent, ready to publish.
CREATE TABLE outbox (
    id           BIGSERIAL   PRIMARY KEY,
    aggregate_id BIGINT      NOT NULL,
    event_id     UUID        NOT NULL UNIQUE,
    payload      BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Wakes the relay at commit time (NOTIFY is delivered when the inserting transaction commits).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
