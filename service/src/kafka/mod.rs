//! Kafka plumbing of the service. See `channel_consumer` (being written).
