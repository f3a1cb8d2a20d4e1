//! The test harness of the orders cache: real PostgreSQL, Redis and Kafka for tests and tools
//! ([`stack`]), the one test support of the workspace ([`app`]: the service on a stack in one call;
//! [`client`]: one method per RPC; [`inspect`]: what Redis really holds; [`metrics`]: what the service reports; [`stats`]:
//! percentiles; [`topic`]: what the topic holds), the
//! service's nodes with their broken variants ([`node`]), and the consistency checks ([`consistency`]).

pub mod app;
pub mod client;
pub mod consistency;
pub mod inspect;
pub mod lag;
pub mod metrics;
pub mod node;
pub mod stack;
pub mod stats;
pub mod test_logs;
pub mod topic;

pub use stack::{
    Backend, Endpoints, RedisFailure, RedisMode, Service, Stack, StackError, StackOptions, TopicSpec,
};
