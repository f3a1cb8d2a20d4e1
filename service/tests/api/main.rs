//! The orders service against real PostgreSQL, Redis and Kafka.

mod cache_path;
mod errors;
mod faults;
mod group_commit;
mod health_check;
mod helpers;
mod overload;
mod redis_cluster;
mod reflection;
mod relay;
mod rpcs;
mod traces;
