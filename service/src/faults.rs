//! Fault injection: deliberately broken variants of the service, for tests only.
//!
//! The consistency harness must prove that its checker catches the weak spots of the naive design, so
//! each one can be switched back on here: a blind cache write in the updater, a blind fill on a read
//! miss, commit-then-produce without the outbox, and offsets stored on receipt. Nothing in the service
//! selects them; `TestFaults::default()` is the correct service. They are runtime settings, not cargo
//! features, because features are unified across a workspace and would leak into every test binary.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::cache::WriteMode;
use crate::domain::Order;
use crate::events;
pub use crate::kafka::OffsetPolicy;

/// Where events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishMode {
    /// The transactional outbox and its relay (correct).
    #[default]
    Outbox,
    /// Broken: commit, then produce from the request handler; an event is lost if the process dies or
    /// Kafka is unreachable between the two.
    AfterCommit,
}

/// The delay of `blind-fill` and `slow-fill`: longer than the updater takes to apply an event, so a
/// change committed during a read lands in the cache before that read's fill.
const SLOW_FILL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, Default)]
pub struct TestFaults {
    /// How the cache updater writes to Redis.
    pub updater_write: WriteMode,
    /// How reads fill a cache miss.
    pub fill_write: WriteMode,
    pub publish: PublishMode,
    /// When the updater's consumer stores offsets.
    pub offset_policy: OffsetPolicy,
    /// A pause between a read's database query and its cache fill. It widens the read-through race so
    /// that tests meet it often; the correct service stays consistent with any delay.
    pub fill_delay: Duration,
}

impl TestFaults {
    /// Correct variants: `none`, and `slow-fill` (the read-through race window held open).
    pub const CORRECT: [&'static str; 2] = ["none", "slow-fill"];

    /// The broken variants, by the names the harness's command line uses.
    pub const VARIANTS: [&'static str; 4] = [
        "blind-cache-write",
        "commit-then-produce",
        "blind-fill",
        "store-on-receipt",
    ];

    /// One named broken variant (see [`VARIANTS`](Self::VARIANTS)).
    pub fn variant(name: &str) -> Option<Self> {
        let mut faults = Self::default();
        match name {
            "blind-cache-write" => faults.updater_write = WriteMode::Unchecked,
            "commit-then-produce" => faults.publish = PublishMode::AfterCommit,
            "blind-fill" => {
                faults.fill_write = WriteMode::Unchecked;
                faults.fill_delay = SLOW_FILL;
            }
            // Correct, but with the read-through race window held open: the compare-and-set must hold.
            "slow-fill" => faults.fill_delay = SLOW_FILL,
            "store-on-receipt" => faults.offset_policy = OffsetPolicy::StoreOnReceipt,
            "none" => {}
            _ => return None,
        }
        Some(faults)
    }
}

/// The naive design's publisher: after the commit, hand the event to the producer and move on. The
/// event lives only in this process's memory until Kafka takes it: a crash, or an outage longer than
/// the producer's message timeout, loses it.
#[derive(Clone)]
pub struct AfterCommitPublisher {
    pub producer: FutureProducer,
    pub topic: String,
}

impl AfterCommitPublisher {
    pub fn publish(&self, order: &Order) {
        let event = events::order_event(order, uuid::Uuid::now_v7());
        let payload = prost::Message::encode_to_vec(&event);
        let key = order.id.to_key();
        let record = FutureRecord::to(&self.topic).key(&key[..]).payload(&payload);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let order_id = order.id;
                tokio::spawn(async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        tracing::warn!(%order_id, "event lost: produce after commit failed");
                    }
                });
            }
            Err((error, _)) => {
                tracing::warn!(%error, order_id = %order.id, "event lost: produce after commit failed")
            }
        }
    }
}
