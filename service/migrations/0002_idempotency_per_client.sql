-- An idempotency key belongs to the client that sent it, as in Stripe's and Google's APIs: another
-- client's identical key is another key. The same client reusing a key for a different order is refused
-- (by the service, comparing the request with the order first created with it).
ALTER TABLE orders DROP CONSTRAINT orders_idempotency_key_key;
ALTER TABLE orders ADD CONSTRAINT orders_client_idempotency_key UNIQUE (client_id, idempotency_key);
