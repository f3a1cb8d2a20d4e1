//! The orders service: a gRPC API on PostgreSQL, a transactional outbox relayed to Kafka, and a cache
//! updater that keeps Redis in step with the database.
//!
//! ```text
//!  CreateOrder, UpdateOrderStatus ──> PostgreSQL: orders + outbox, one transaction
//!       (group commit: writes that arrive together share it)
//!                              │
//!                        outbox relay ──> Kafka `order-events` ──> cache updater (ChannelConsumer)
//!                                                                        │ version compare-and-set
//!  GetOrder ──> Redis (MGET) ── miss / older than min_version ──> PostgreSQL, fill by compare-and-set
//! ```
//!
//! Modules, one concept each: [`domain`] (valid values), [`storage`] (PostgreSQL and the outbox),
//! [`cache`] (one Redis or a Redis Cluster), [`events`] (relay and updater), [`kafka`] (`ChannelConsumer`), [`grpc`] (the API),
//! [`reads`] (cache-first reads), [`config`], [`startup`], [`shutdown`], [`telemetry`].

pub mod backoff;
pub mod cache;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod kafka;
pub mod proto;
pub mod reads;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod telemetry;
