-- CreateOrder's statement as pgbench runs it (loadtest/write-path.sh): the order, its item, its first
-- version and its event in one statement. The database's own rate for the write the API makes, with a
-- client that costs next to nothing.
WITH created AS (
         INSERT INTO orders (id, client_id, status, currency_code, amount, idempotency_key, version,
                             created_at, updated_at)
         VALUES (nextval('orders_id_seq'), 1, 'CREATED', 'EUR', 10, gen_random_uuid()::text, 1, now(), now())
         ON CONFLICT (client_id, idempotency_key) DO NOTHING
         RETURNING id),
     items AS (
         INSERT INTO order_items (order_id, position, sku_id, quantity, price)
         SELECT created.id, item.position - 1, item.sku_id, item.quantity, item.price
         FROM created,
              UNNEST(ARRAY[10]::bigint[], ARRAY[2]::int[], ARRAY[5]::numeric[])
                  WITH ORDINALITY AS item (sku_id, quantity, price, position)),
     version AS (
         INSERT INTO order_versions (order_id, version, status, changed_at)
         SELECT id, 1, 'CREATED', now() FROM created)
INSERT INTO outbox (aggregate_id, event_id, payload, traceparent)
SELECT id, gen_random_uuid(), decode(repeat('ab', 120), 'hex'), NULL FROM created
RETURNING aggregate_id;
