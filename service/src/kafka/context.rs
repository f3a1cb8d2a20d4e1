//! The state the poll thread shares with librdkafka's rebalance callbacks, and those callbacks.
//!
//! librdkafka runs the rebalance callback on the thread that polls the consumer, in the middle of
//! `poll()`. That is the poll thread, so no other thread ever touches this state; the `Mutex` is there
//! because the context must be `Sync`, and it is never contended. The poll loop takes it between polls
//! and never holds it across one.
//!
//! What happens on a rebalance:
//!
//! * **Revoke** (before librdkafka unassigns; for eager protocols that is every partition, for
//!   cooperative ones and `group.protocol=consumer` only the moving ones): apply every acknowledgement
//!   sent so far, drop the partitions' undelivered messages from the delivery buffer, then store and
//!   synchronously commit what was handled in them. The commit happens while the partitions are still
//!   ours, so the next owner starts exactly after the last handled message. If the assignment was
//!   *lost* (session timeout, fencing) the partitions may already be someone else's: no commit, the
//!   handled tail is read again by the new owner (at-least-once).
//! * **Assign**: before librdkafka starts fetching them, the partitions' fetch queues are split off the
//!   main queue, to be read in batches (`fetch_queues`). After, each partition gets a new epoch;
//!   librdkafka starts reading it at its committed offset.

use std::collections::BTreeSet;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::acknowledgement::{Acknowledgements, Request};
use super::delivery_buffer::DeliveryBuffer;
use super::doorbell::Doorbell;
use super::fetch_queues::FetchQueues;
use super::offsets::OffsetTracker;
use crate::telemetry::ErrorChain;
use crate::telemetry::metrics;

/// The consumer as the poll thread owns it.
pub(crate) type PolledConsumer<T> = BaseConsumer<ChannelContext<T>>;

/// The poll thread's bookkeeping.
pub(crate) struct PollState {
    pub offsets: OffsetTracker,
    /// Commands from the stream side, in the order they were sent.
    requests: Receiver<Request>,
    /// Acknowledgements from `handle()`, and the batches they are for.
    pub acknowledgements: Acknowledgements,
    /// Commands read while draining acknowledgements in a callback, for the poll loop to carry out.
    deferred: Vec<Request>,
    /// Partitions with messages waiting that back-pressure kept from being read in the last turn
    /// (`read_policy`).
    pub held_back: BTreeSet<i32>,
}

impl PollState {
    pub fn new(offsets: OffsetTracker, requests: Receiver<Request>, topic: Arc<str>) -> Self {
        Self {
            offsets,
            requests,
            acknowledgements: Acknowledgements::new(topic),
            deferred: Vec::new(),
            held_back: BTreeSet::new(),
        }
    }

    /// Applies every acknowledgement left so far; keeps commands for
    /// [`take_commands`](Self::take_commands). Commands first: see `acknowledgement` for why.
    pub fn apply_acknowledgements(&mut self) {
        while let Ok(command) = self.requests.try_recv() {
            self.deferred.push(command);
        }
        let offsets = &mut self.offsets;
        self.acknowledgements.collect(|handled| offsets.handle(handled));
    }

    /// Forgets the messages of partitions (or positions) no longer current: their acknowledgements
    /// cannot matter any more.
    pub fn forget_stale_acknowledgements(&mut self) {
        let offsets = &self.offsets;
        self.acknowledgements
            .forget(|handled| !offsets.is_current(handled.partition, handled.epoch));
    }

    pub fn take_commands(&mut self) -> Vec<Request> {
        std::mem::take(&mut self.deferred)
    }

    /// Hands the offsets that advanced to librdkafka's offset store (from where `enable.auto.commit`
    /// commits them). Only assigned partitions are in the tracker, so the store cannot fail with
    /// `__STATE` for a partition we no longer own.
    pub fn store_offsets<T: Send + 'static>(&mut self, consumer: &PolledConsumer<T>, topic: &str) {
        let offsets = self.offsets.take_offsets_to_store();
        if offsets.is_empty() {
            return;
        }
        if let Err(error) = consumer.store_offsets(&partition_list(topic, &offsets)) {
            warn!(topic, ?offsets, error = %ErrorChain(&error), "storing offsets failed");
        }
    }

    /// Synchronously commits the handled offsets of `partitions` (every assigned partition for `None`)
    /// that this consumer has not committed yet.
    pub fn commit<T: Send + 'static>(
        &mut self,
        consumer: &PolledConsumer<T>,
        topic: &str,
        partitions: Option<&[i32]>,
    ) -> KafkaResult<()> {
        let offsets = self.offsets.offsets_to_commit(partitions);
        if offsets.is_empty() {
            return Ok(());
        }
        consumer.commit(&partition_list(topic, &offsets), CommitMode::Sync)?;
        debug!(topic, ?offsets, "committed");
        self.offsets.mark_committed(&offsets);
        Ok(())
    }
}

/// The librdkafka context of a channel consumer: routes its logs to `tracing` and keeps offsets and the
/// delivery buffer right across rebalances.
pub(crate) struct ChannelContext<T> {
    topic: Arc<str>,
    state: Mutex<PollState>,
    /// Locked like `state`: by the poll thread only, in its steps or in a callback inside `poll()`.
    queues: Mutex<FetchQueues>,
    buffer: Arc<DeliveryBuffer<T>>,
}

impl<T: Send + 'static> ChannelContext<T> {
    pub fn new(
        topic: Arc<str>,
        state: PollState,
        buffer: Arc<DeliveryBuffer<T>>,
        doorbell: Arc<Doorbell>,
    ) -> Self {
        Self {
            queues: Mutex::new(FetchQueues::new(&topic, doorbell)),
            topic,
            state: Mutex::new(state),
            buffer,
        }
    }

    /// Only the poll thread locks this (see the module documentation), so poisoning can only come from a
    /// panic of that same thread, which then ends anyway.
    pub fn state(&self) -> MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Only the poll thread locks this, as `state`.
    pub fn queues(&self) -> MutexGuard<'_, FetchQueues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn buffer(&self) -> &DeliveryBuffer<T> {
        &self.buffer
    }

    fn on_revoke(&self, consumer: &PolledConsumer<T>, revoked: &TopicPartitionList) {
        let partitions = our_partitions(&self.topic, revoked);
        let mut state = self.state();
        state.apply_acknowledgements();
        let dropped: usize = partitions.iter().map(|&p| self.buffer.remove_partition(p)).sum();
        if consumer.assignment_lost() {
            warn!(topic = %self.topic, ?partitions, dropped, "assignment lost: nothing committed");
        } else {
            state.store_offsets(consumer, &self.topic);
            if let Err(error) = state.commit(consumer, &self.topic, Some(&partitions)) {
                warn!(topic = %self.topic, ?partitions, error = %ErrorChain(&error), "commit on revoke failed");
            }
            info!(topic = %self.topic, ?partitions, dropped, "partitions revoked");
        }
        for &partition in &partitions {
            metrics::partition_revoked(partition);
        }
        let mut queues = self.queues();
        for partition in &partitions {
            state.offsets.revoke(*partition);
            state.held_back.remove(partition);
            queues.remove(*partition);
        }
        state.forget_stale_acknowledgements();
    }

    /// Before librdkafka starts fetching the new partitions: their fetch queues, split off the main
    /// queue, are read in batches (`fetch_queues`).
    fn before_assign(&self, consumer: &PolledConsumer<T>, assigned: &TopicPartitionList) {
        let client = consumer.client().native_ptr();
        let mut queues = self.queues();
        for partition in our_partitions(&self.topic, assigned) {
            if !queues.split(client, partition) {
                warn!(topic = %self.topic, partition, "no fetch queue for the partition: read one message at a time");
            }
        }
    }

    fn on_assign(&self, assigned: &TopicPartitionList) {
        let partitions = our_partitions(&self.topic, assigned);
        let mut state = self.state();
        for &partition in &partitions {
            state.offsets.assign(partition);
        }
        info!(topic = %self.topic, ?partitions, "partitions assigned");
        for &partition in &partitions {
            metrics::partition_assigned(partition);
        }
    }

    fn on_rebalance_error(&self) {
        // librdkafka unassigns everything after a rebalance error; what we hold is no longer ours.
        let mut state = self.state();
        state.offsets.revoke_all();
        state.forget_stale_acknowledgements();
        state.held_back.clear();
        self.buffer.clear();
        self.queues().remove_all();
    }
}

impl<T: Send + 'static> ClientContext for ChannelContext<T> {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            Level::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            Level::Notice | Level::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
            Level::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        warn!(target: "librdkafka", error = %ErrorChain(&error), reason, "client error");
    }

    /// librdkafka's statistics, every `statistics.interval.ms` when set: the lag of each partition this
    /// consumer owns (-1 while unknown, e.g. before its first fetch, is not reported).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&*self.topic) else {
            return;
        };
        for (&partition, progress) in &topic.partitions {
            // Partition -1 is librdkafka's internal "unassigned" queue.
            if partition >= 0 && progress.consumer_lag >= 0 {
                metrics::consumer_lag(partition, progress.consumer_lag);
            }
        }
    }
}

impl<T: Send + 'static> ConsumerContext for ChannelContext<T> {
    fn pre_rebalance(&self, consumer: &PolledConsumer<T>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => self.on_revoke(consumer, revoked),
            Rebalance::Assign(assigned) => self.before_assign(consumer, assigned),
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, _consumer: &PolledConsumer<T>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => self.on_assign(assigned),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                warn!(topic = %self.topic, error = %ErrorChain(error), "rebalance error: dropping the assignment");
                self.on_rebalance_error();
            }
        }
    }
}

fn our_partitions(topic: &str, list: &TopicPartitionList) -> Vec<i32> {
    list.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

pub(crate) fn partition_list(topic: &str, offsets: &[(i32, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for &(partition, offset) in offsets {
        // Only fails for offsets librdkafka cannot represent; ours come from its own messages.
        if let Err(error) = list.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            warn!(topic, partition, offset, error = %ErrorChain(&error), "cannot list offset");
        }
    }
    list
}
