//! The poll thread: the one place that talks to librdkafka.
//!
//! It runs a loop, and each turn of it does, in order:
//!
//! 1. **Requests.** Applies the acknowledgements sent by `handle()`, stores the offsets that advanced,
//!    and carries out `commit()` and `close()`.
//! 2. **Back-pressure.** If the reader is behind, or holds too many messages unhandled, pauses the
//!    partitions holding more than their share; resumes each once the reader took and handled enough of
//!    its messages (`pause_policy`).
//! 3. **A batch.** Polls up to `consume_size - buffered` messages in one go (the first poll waits at most
//!    100 ms, the rest do not wait), deserializes them and hands the batch to the delivery buffer with
//!    one wake-up. Rebalance callbacks run inside these polls.
//!
//! The loop never waits for the reader. A slow reader makes the buffer fill up; then partitions are
//! paused and the loop goes on polling, which is what keeps the member in the group: librdkafka leaves
//! the group when `poll()` is not called for `max.poll.interval.ms`, and serves rebalances only inside
//! `poll()`. A pause in librdkafka also discards what it had prefetched for the partition, and a resume
//! fetches again from the message after the last one returned, so pausing never loses nor repeats a
//! message.
//!
//! Errors: librdkafka retries transient errors itself (a broker down, a connection reset); they are
//! logged and the loop goes on. A fatal error ends the loop: the stream's last item is
//! [`ConsumerError::Fatal`].

use crate::telemetry::ErrorChain;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::acknowledgement::{Acknowledgement, BatchShared, Request};
use super::context::{PolledConsumer, partition_list};
use super::delivery_buffer::DeliveryBuffer;
use super::deserializer::Deserializer;
use super::error::{ConsumerError, MessagePart};
use super::message::{KafkaMessage, Origin, UndecodableMessage};
use super::offsets::{Epoch, OffsetTracker};
use super::pause_policy::{self, Buffered, Decision};
use super::progress::ProgressReporter;

/// What the stream yields.
pub type Item<K, V> = Result<KafkaMessage<K, V>, ConsumerError>;

/// How long one poll waits for a first message while nothing is paused; also the longest delay before
/// an acknowledgement reaches the offset store.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long it waits while partitions are paused, so that they resume soon after the reader catches up.
const PAUSED_POLL: Duration = Duration::from_millis(10);
/// How long a full buffer may wait for the reader before partitions are paused: a reader that keeps up
/// takes a batch in far less, and this is nothing next to `max.poll.interval.ms`.
const READER_GRACE: Duration = Duration::from_millis(5);

pub(crate) struct PollLoop<K: Send + 'static, V: Send + 'static> {
    pub consumer: PolledConsumer<Item<K, V>>,
    pub topic: Arc<str>,
    pub consume_size: usize,
    pub key_deserializer: Box<dyn Deserializer<K>>,
    pub value_deserializer: Box<dyn Deserializer<V>>,
    /// Cloned into every message, to acknowledge itself.
    pub requests: Sender<Request>,
    /// A mutex only because the loop's steps take `&self`: the poll thread alone uses it.
    pub progress: Mutex<ProgressReporter>,
}

/// Why the loop stopped.
enum Stop {
    Close(oneshot::Sender<Result<(), ConsumerError>>),
    Fatal(KafkaError),
}

impl<K: Send + 'static, V: Send + 'static> PollLoop<K, V> {
    /// Runs until `close()` (or the consumer's `Drop`) asks it to stop, or a fatal error.
    pub fn run(self) {
        let stop = loop {
            if let Some(stop) = self.serve_requests() {
                break stop;
            }
            self.apply_back_pressure();
            self.report_progress();
            if let Err(fatal) = self.read_batch() {
                break Stop::Fatal(fatal);
            }
        };
        self.close(stop);
    }

    fn buffer(&self) -> &super::delivery_buffer::DeliveryBuffer<Item<K, V>> {
        self.consumer.context().buffer()
    }

    /// Step 1. Returns `Some` when asked to close.
    fn serve_requests(&self) -> Option<Stop> {
        let context = self.consumer.context();
        let mut state = context.state();
        state.apply_acknowledgements();
        state.store_offsets(&self.consumer, &self.topic);
        for command in state.take_commands() {
            match command {
                Request::Commit(reply) => {
                    let result = state
                        .commit(&self.consumer, &self.topic, None)
                        .map_err(ConsumerError::Commit);
                    let _ = reply.send(result);
                }
                Request::Close(reply) => return Some(Stop::Close(reply)),
                Request::Handled(_) => {} // Applied by `apply_acknowledgements`.
            }
        }
        None
    }

    /// Step 2. Pauses partitions when the reader is behind, resumes each once the reader took enough of
    /// its messages: the rule is `pause_policy`'s.
    ///
    /// Pausing is not free: librdkafka drops what it prefetched for the partition and, on resume, fetches
    /// it again, after the fetch in flight (which the broker may hold for `fetch.wait.max.ms` when the
    /// other partitions are idle). So the consumer pauses only when the reader really is behind: the
    /// buffer is still full after a short grace.
    fn apply_back_pressure(&self) {
        let total = self.buffer().wait_below(self.consume_size, READER_GRACE);
        let mut state = self.consumer.context().state();
        let assigned: Vec<i32> = state.offsets.assigned().collect();
        let (_, lengths) = self.buffer().lengths();
        let queued = |partition: i32| lengths.get(&partition).copied().unwrap_or(0);
        let outstanding = |partition: i32| state.offsets.outstanding(partition);
        let buffered = Buffered {
            consume_size: self.consume_size,
            total,
            queued: &queued,
            total_outstanding: assigned.iter().map(|&p| outstanding(p)).sum(),
            outstanding: &outstanding,
        };
        let Decision { pause, resume } = pause_policy::decide(buffered, &assigned, &state.paused);
        let listed = |partitions: &[i32]| {
            let offsets: Vec<(i32, i64)> = partitions.iter().map(|&p| (p, 0)).collect();
            partition_list(&self.topic, &offsets)
        };
        if !pause.is_empty() {
            match self.consumer.pause(&listed(&pause)) {
                Ok(()) => state.paused.extend(pause),
                Err(error) => {
                    warn!(topic = %self.topic, error = %ErrorChain(&error), "pausing partitions failed")
                }
            }
        }
        if !resume.is_empty() {
            match self.consumer.resume(&listed(&resume)) {
                Ok(()) => {
                    for partition in &resume {
                        state.paused.remove(partition);
                    }
                }
                Err(error) => {
                    warn!(topic = %self.topic, error = %ErrorChain(&error), "resuming partitions failed")
                }
            }
        }
    }

    /// Between steps 2 and 3, once a second: what is in flight, paused, and unhandled longest
    /// (`progress`).
    fn report_progress(&self) {
        let state = self.consumer.context().state();
        let mut reporter = self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reporter.tick(&state.offsets, &state.paused);
    }

    /// Step 3. Reads one batch and hands it over. `Err` only for a fatal error.
    fn read_batch(&self) -> Result<(), KafkaError> {
        let (buffered, _) = self.buffer().lengths();
        let (outstanding, nothing_paused) = {
            let state = self.consumer.context().state();
            (state.offsets.total_outstanding(), state.paused.is_empty())
        };
        // Room in the buffer, and under the bound on everything outstanding (`pause_policy`). Even with
        // no room, poll: that serves rebalances and heartbeats. The partitions over their share are
        // paused then; a message of another one may arrive, and is kept (see step 2).
        let room = self
            .consume_size
            .saturating_sub(buffered)
            .min(pause_policy::outstanding_bound(self.consume_size).saturating_sub(outstanding))
            .max(1);
        let mut timeout = if nothing_paused { IDLE_POLL } else { PAUSED_POLL };
        let shared = BatchShared::new(self.requests.clone(), self.topic.clone());
        let mut batch: Vec<(i32, Epoch, Item<K, V>)> = Vec::new();
        // One clock reading for the batch: what `progress` needs is seconds, not the message's instant.
        let received_at = Instant::now();
        while batch.len() < room {
            let polled = self.consumer.poll(timeout);
            timeout = Duration::ZERO;
            match polled {
                None => break,
                Some(Ok(message)) => {
                    if let Some(item) = self.receive(&message, &shared, received_at) {
                        batch.push(item);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    return Err(KafkaError::MessageConsumptionFatal(code));
                }
                Some(Err(error)) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        warn!(topic = %self.topic, error = %ErrorChain(&error), ?code, reason, "fatal error");
                        return Err(KafkaError::MessageConsumptionFatal(code));
                    }
                    // Transient: librdkafka reconnects and retries by itself. It reports the same error to
                    // the context's error callback too, which logs it at warn level; here it is detail.
                    debug!(topic = %self.topic, error = %ErrorChain(&error), "Kafka error; librdkafka retries");
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        // A rebalance callback may have run between two polls of this batch: keep only the messages of
        // partitions still assigned in the epoch they were received in.
        let state = self.consumer.context().state();
        let current = batch
            .into_iter()
            .filter(|(partition, epoch, _)| state.offsets.is_current(*partition, *epoch))
            .map(|(partition, _, item)| (partition, item));
        self.buffer().push_batch(current);
        Ok(())
    }

    /// Registers a received message with the offset tracker and deserializes it.
    fn receive(
        &self,
        message: &BorrowedMessage<'_>,
        shared: &Arc<BatchShared>,
        received_at: Instant,
    ) -> Option<(i32, Epoch, Item<K, V>)> {
        let (partition, offset) = (message.partition(), message.offset());
        let epoch = {
            let mut state = self.consumer.context().state();
            register(
                &mut state.offsets,
                self.buffer(),
                &self.topic,
                partition,
                offset,
                received_at,
            )
        };
        let Some(epoch) = epoch else {
            debug!(topic = %self.topic, partition, offset, "message of an unassigned partition dropped");
            return None;
        };
        let origin = Origin {
            partition,
            offset,
            timestamp: message.timestamp(),
            headers: message.headers().map(|headers| headers.detach()),
        };
        let acknowledgement = Acknowledgement::new(shared.clone(), partition, offset, epoch);
        let key = self.key_deserializer.deserialize(message.key());
        let value = self.value_deserializer.deserialize(message.payload());
        let item = match (key, value) {
            (Ok(key), Ok(value)) => Ok(KafkaMessage::new(key, value, origin, acknowledgement)),
            (Err(error), _) => {
                Err(self.undecodable(message, origin, MessagePart::Key, error, acknowledgement))
            }
            (_, Err(error)) => {
                Err(self.undecodable(message, origin, MessagePart::Value, error, acknowledgement))
            }
        };
        Some((partition, epoch, item))
    }

    fn undecodable(
        &self,
        message: &BorrowedMessage<'_>,
        origin: Origin,
        part: MessagePart,
        error: super::error::DeserializeError,
        acknowledgement: Acknowledgement,
    ) -> ConsumerError {
        let undecodable = UndecodableMessage::new(
            origin,
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec),
            part,
            error,
            acknowledgement,
        );
        warn!(%undecodable, "undecodable message");
        ConsumerError::Undecodable(Box::new(undecodable))
    }

    /// Commits what was handled, ends the stream, and leaves the group.
    fn close(self, stop: Stop) {
        let commit = {
            let mut state = self.consumer.context().state();
            state.apply_acknowledgements();
            state.store_offsets(&self.consumer, &self.topic);
            let commit = state.commit(&self.consumer, &self.topic, None);
            // Commands that came with or after the close: the consumer is closing, say so.
            for command in state.take_commands() {
                if let Request::Commit(reply) | Request::Close(reply) = command {
                    let _ = reply.send(Err(ConsumerError::Closed));
                }
            }
            commit
        };
        if let Err(error) = &commit {
            warn!(topic = %self.topic, error = %ErrorChain(error), "final commit failed");
        }
        let (last_words, reply) = match stop {
            Stop::Close(reply) => (None, Some(reply)),
            Stop::Fatal(error) => (Some(Err(ConsumerError::Fatal(error))), None),
        };
        self.buffer().finish(last_words);
        // rdkafka 0.39's `BaseConsumer::drop` closes the consumer: it revokes the assignment (our
        // callback finds nothing left to commit), sends LeaveGroup so the group rebalances at once, and
        // polls until librdkafka reports the consumer closed.
        drop(self.consumer);
        debug!(topic = %self.topic, "consumer closed");
        if let Some(reply) = reply {
            let _ = reply.send(commit.map_err(ConsumerError::Commit));
        }
    }
}

/// Registers a received message with the offset tracker. If librdkafka moved the partition's
/// position back (an offset reset: the tracker starts a new epoch), the partition's messages still
/// buffered from the old position are dropped: they come again from the new position, and
/// acknowledgements of the old epoch are ignored, so the reader would get them twice for nothing.
/// (Messages of the old epoch in the batch being read are dropped when the batch is handed over.)
fn register<T>(
    offsets: &mut OffsetTracker,
    buffer: &DeliveryBuffer<T>,
    topic: &str,
    partition: i32,
    offset: i64,
    received_at: Instant,
) -> Option<Epoch> {
    let before = offsets.epoch(partition);
    let epoch = offsets.deliver(partition, offset, received_at)?;
    if before.is_some_and(|before| before != epoch) {
        let dropped = buffer.remove_partition(partition);
        debug!(
            topic,
            partition, offset, dropped, "position moved back; buffered messages of the old position dropped"
        );
    }
    Some(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_moved_back_drops_the_partitions_buffered_messages_of_the_old_position() {
        let mut offsets = OffsetTracker::default();
        let buffer: DeliveryBuffer<i64> = DeliveryBuffer::new();
        offsets.assign(0);
        offsets.assign(1);
        let now = Instant::now();
        for offset in 10..13 {
            let epoch = register(&mut offsets, &buffer, "t", 0, offset, now);
            assert!(epoch.is_some());
            register(&mut offsets, &buffer, "t", 1, offset, now);
        }
        buffer.push_batch((10..13).flat_map(|offset| [(0, offset), (1, offset)]));
        assert_eq!(buffer.lengths().0, 6);

        let old = offsets.epoch(0);
        let new = register(&mut offsets, &buffer, "t", 0, 11, now);
        assert_ne!(new, old, "offset 11 again: a new epoch");
        let (total, per_partition) = buffer.lengths();
        assert_eq!(
            per_partition.get(&0).copied().unwrap_or(0),
            0,
            "partition 0's old messages dropped"
        );
        assert_eq!(
            (total, per_partition.get(&1).copied()),
            (3, Some(3)),
            "partition 1's kept"
        );

        // Forward, in the same epoch: nothing dropped.
        buffer.push_batch([(0, 11)]);
        assert_eq!(register(&mut offsets, &buffer, "t", 0, 12, now), new);
        assert_eq!(buffer.lengths().0, 4);
    }
}
