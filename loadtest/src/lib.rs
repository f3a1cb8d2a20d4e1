//! Load tests and benchmarks of the orders service.
//!
//! The `loadtest` binary drives the gRPC API with [goose](https://book.goose.rs) users, measures how
//! stale the cache is while it does, samples memory, and writes goose's reports with our own figures
//! added. The criterion benchmarks under `benches/` measure `ChannelConsumer` against plain rdkafka
//! consumers on a real broker, and cached reads against reads with the cache off.
//!
//! One concept per module:
//!
//! * [`target`]: what the load goes to: a running service, or one started here on the local stack;
//! * [`cache_off`]: a Redis stand-in that refuses every command, for the cache-off baseline;
//! * [`seed`]: the data set a run creates for itself, and warming or flushing its cache entries;
//! * [`cache_admin`]: direct Redis access (evictions for cold reads, flushes);
//! * [`session`]: what each goose user keeps (its gRPC client) and how a call is recorded;
//! * [`workload`]: the order pools the users share, and the read-source counters;
//! * [`scenarios`]: the goose scenarios and their weights;
//! * [`staleness`]: the probe timing an update until the cache serves it;
//! * [`memory`]: resident-memory sampling;
//! * [`stats`]: percentiles of latency samples (the harness's, shared);
//! * [`report`]: our figures, and the post-processing of goose's reports (offline charts).

pub mod cache_admin;
pub mod cache_off;
pub mod memory;
pub mod report;
pub mod scenarios;
pub mod seed;
pub mod session;
pub mod staleness;
pub use harness::stats;
pub mod target;
pub mod workload;
