-- A status change's event is no longer encoded by the service in the change's transaction: its outbox
-- row names the version it announces, and the relay encodes the event at publish time from that version
-- (order_versions: status, time) and the order's unchanging columns and items. So the change is one
-- statement (the update, its version and its event row), not a transaction of four round trips.
-- Rows written before, and the events of new orders, keep their encoded payload.
ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE outbox ADD COLUMN version BIGINT;
ALTER TABLE outbox ADD CONSTRAINT outbox_payload_or_version CHECK (payload IS NOT NULL OR version IS NOT NULL);
