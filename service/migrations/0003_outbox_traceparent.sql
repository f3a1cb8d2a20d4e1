-- The W3C traceparent of the request that made the change, passed on to the Kafka message's headers so
-- that one write can be followed from its RPC to the cache updater (NULL for rows written before).
ALTER TABLE outbox ADD COLUMN traceparent text;
