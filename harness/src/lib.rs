//! The test harness of the orders cache: real PostgreSQL, Redis and Kafka for tests and tools
//! ([`stack`]), and the consistency checks that run against them.

pub mod consistency;
pub mod stack;

pub use stack::{Backend, Endpoints, Service, Stack, StackError, StackOptions, TopicSpec};
