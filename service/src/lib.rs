//! The orders service: a gRPC API on PostgreSQL, a transactional outbox relayed to Kafka, and a cache
//! updater that keeps Redis in step with the database.

pub mod kafka;
