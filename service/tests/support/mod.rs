//! Shared code of the `channel_consumer*` integration tests.
//!
//! Each test binary compiles this module and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod channel_consumer_checker;
pub mod channel_consumer_fixtures;
