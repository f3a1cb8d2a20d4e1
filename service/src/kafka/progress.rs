//! What a consumer reports about itself: messages delivered and not yet handled, partitions held back, and
//! the unhandled message received longest ago.
//!
//! Why the last one matters: a partition's committed offset cannot pass a message that was not
//! handled, so one message a reader forgot (or holds while it waits on something that never comes)
//! freezes its partition's commits, and a restart or a rebalance then delivers everything after it again.
//! Nothing else shows it: the stream keeps flowing. So the poll thread looks once a second
//! ([`REPORT_EVERY`]), publishes a [`ConsumerProgress`] (read with
//! [`ConsumerControl::progress`](super::ConsumerControl::progress)), records it as metrics, and warns,
//! once per message, about a message unhandled for longer than the consumer's `stuck_after`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use super::offsets::{OffsetTracker, Unhandled};
use crate::telemetry::metrics;

/// How often the poll thread takes stock.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a message may stay unhandled before it is reported, unless the builder sets it.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(60);

/// The consumer's state at its last report (at most [`REPORT_EVERY`] old).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerProgress {
    /// Messages handed out (or buffered to be) in the current assignments, not handled yet.
    pub unhandled: usize,
    /// Partitions with messages waiting that back-pressure keeps from being read: the reader is behind,
    /// or holds too many of theirs unhandled.
    pub held_back_partitions: Vec<i32>,
    /// The unhandled message received longest ago.
    pub oldest_unhandled: Option<OldestUnhandled>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldestUnhandled {
    pub partition: i32,
    pub offset: i64,
    /// Since the poll thread received it.
    pub age: Duration,
    /// Older than the consumer's `stuck_after`: its partition's commits are held back.
    pub stuck: bool,
}

/// The poll thread's side: takes stock, publishes, records, warns.
pub(crate) struct ProgressReporter {
    topic: Arc<str>,
    stuck_after: Duration,
    published: Arc<Mutex<ConsumerProgress>>,
    last_report: Option<Instant>,
    /// The last message warned about, so that a stuck message is reported once, not every second.
    warned: Option<(i32, i64)>,
}

impl ProgressReporter {
    pub fn new(topic: Arc<str>, stuck_after: Duration, published: Arc<Mutex<ConsumerProgress>>) -> Self {
        Self {
            topic,
            stuck_after,
            published,
            last_report: None,
            warned: None,
        }
    }

    /// Takes stock if the last report is [`REPORT_EVERY`] old.
    pub fn tick(&mut self, offsets: &OffsetTracker, held_back: &BTreeSet<i32>) {
        let now = Instant::now();
        if self.last_report.is_some_and(|last| now - last < REPORT_EVERY) {
            return;
        }
        self.last_report = Some(now);
        let oldest = offsets.oldest_unhandled().map(
            |Unhandled {
                 partition,
                 offset,
                 received_at,
             }| {
                let age = now.saturating_duration_since(received_at);
                OldestUnhandled {
                    partition,
                    offset,
                    age,
                    stuck: age > self.stuck_after,
                }
            },
        );
        let progress = ConsumerProgress {
            unhandled: offsets.unhandled(),
            held_back_partitions: held_back.iter().copied().collect(),
            oldest_unhandled: oldest,
        };
        metrics::consumer_progress(
            &self.topic,
            progress.unhandled,
            progress.held_back_partitions.len(),
            oldest.map_or(Duration::ZERO, |o| o.age),
        );
        if let Some(stuck) = oldest.filter(|o| o.stuck)
            && self.warned != Some((stuck.partition, stuck.offset))
        {
            self.warned = Some((stuck.partition, stuck.offset));
            warn!(
                topic = %self.topic,
                partition = stuck.partition,
                offset = stuck.offset,
                age = ?stuck.age,
                "a message is still unhandled: its partition's commits wait for it"
            );
        }
        *self
            .published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = progress;
    }
}
