//! The poll thread: the one place that talks to librdkafka.
//!
//! It runs a loop, and each turn of it does, in order:
//!
//! 1. **Requests.** Applies the acknowledgements sent by `handle()`, stores the offsets that advanced,
//!    and carries out `commit()` and `close()`.
//! 2. **Events.** Serves what waits on the consumer's main queue, without waiting: rebalance callbacks
//!    run here (inside `poll()`), errors are looked at.
//! 3. **A batch.** Reads what the buffer has room for (`read_policy`) from the assigned partitions'
//!    own queues, in turn, each in one batch call (`fetch_queues`), deserializes it and hands it to the
//!    delivery buffer with one wake-up. With nothing to read, waits for the doorbell: librdkafka rings
//!    it when a queue gets something, the reader when it made the room the loop waits for.
//!
//! The loop never waits for the reader longer than a short poll. A slow reader makes the buffer fill
//! up; then the loop reads no more messages but goes on serving events, which is what keeps the member
//! in the group: librdkafka leaves the group when the consumer is not polled for
//! `max.poll.interval.ms`, and serves rebalances only inside `poll()`. What is not read waits in
//! librdkafka's prefetch queue, which its own settings bound.
//!
//! Errors: librdkafka retries transient errors itself (a broker down, a connection reset); they are
//! logged and the loop goes on. A fatal error ends the loop: the stream's last item is
//! [`ConsumerError::Fatal`].

use crate::telemetry::ErrorChain;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::acknowledgement::{Acknowledgement, Handled, Request};
use super::context::{ChannelContext, PollState, PolledConsumer};
use super::delivery_buffer::DeliveryBuffer;
use super::deserializer::Deserializer;
use super::doorbell::Doorbell;
use super::error::{ConsumerError, MessagePart};
use super::fetch_queues::{Fetched, RawMessage};
use super::message::{KafkaMessage, Origin, UndecodableMessage};
use super::offsets::Epoch;
use super::progress::ProgressReporter;
use super::read_policy::{self, Load, Plan};

/// What the stream yields.
pub type Item<K, V> = Result<KafkaMessage<K, V>, ConsumerError>;

/// How long the loop waits for a message or an event when it has nothing to do; also the longest delay
/// before an acknowledgement reaches the offset store.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long it waits when the reader left no room: the reader rings when it takes, but handling frees
/// room too (under the outstanding bound) and does not ring.
const BUSY_WAIT: Duration = Duration::from_millis(10);

pub(crate) struct PollLoop<K: Send + 'static, V: Send + 'static> {
    /// Declared before the consumer, so that it drops first, also when the thread unwinds.
    pub _queues_first: ClearQueues<Item<K, V>>,
    pub consumer: PolledConsumer<Item<K, V>>,
    pub topic: Arc<str>,
    pub consume_size: usize,
    pub key_deserializer: Box<dyn Deserializer<K>>,
    pub value_deserializer: Box<dyn Deserializer<V>>,
    /// A mutex only because the loop's steps take `&self`: the poll thread alone uses it.
    pub progress: Mutex<ProgressReporter>,
    /// Rung by librdkafka when any of the consumer's queues gets something (`fetch_queues`).
    pub doorbell: Arc<Doorbell>,
    /// Which partition's queue the next batch starts with.
    pub rotation: Cell<usize>,
}

/// Clears the consumer's fetch queues when dropped: their handles point into the consumer, so they
/// must go before it (`fetch_queues`).
pub(crate) struct ClearQueues<T: Send + 'static>(pub Arc<ChannelContext<T>>);

impl<T: Send + 'static> Drop for ClearQueues<T> {
    fn drop(&mut self) {
        self.0.queues().clear();
    }
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
            }
        }
        None
    }

    /// Once a second: what is in flight, held back, and unhandled longest (`progress`).
    fn report_progress(&self) {
        let state = self.consumer.context().state();
        let mut reporter = self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reporter.tick(&state.offsets, &state.held_back);
    }

    /// What this turn may read (`read_policy`); records the partitions it holds back.
    fn plan(&self) -> Plan {
        let buffered = self.buffer().len();
        let mut state = self.consumer.context().state();
        let assigned: Vec<i32> = state.offsets.assigned().collect();
        let outstanding = |partition: i32| state.offsets.outstanding(partition);
        let load = Load {
            consume_size: self.consume_size,
            buffered,
            total_outstanding: state.offsets.total_outstanding(),
            outstanding: &outstanding,
        };
        let plan = read_policy::plan(load, &assigned);
        // Held back: a partition with messages waiting that this turn does not read.
        let queues = self.consumer.context().queues();
        let held_back = assigned
            .into_iter()
            .filter(|p| (plan.room == 0 || !plan.read.contains(p)) && queues.waiting(*p))
            .collect();
        state.held_back = held_back;
        plan
    }

    /// Steps 2 and 3. Serves events, then reads one batch and hands it over. `Err` only for a fatal
    /// error.
    fn read_batch(&self) -> Result<(), KafkaError> {
        // Reset before anything is looked at: what arrives from here on rings.
        self.doorbell.reset();
        // One clock reading for the batch: what `progress` needs is seconds, not the message's instant.
        let received_at = Instant::now();
        let mut batch: Vec<(i32, Epoch, Item<K, V>)> = Vec::new();
        let plan = self.plan();
        let changes_before = {
            let mut state = self.consumer.context().state();
            state.acknowledgements.reserve(plan.room);
            state.offsets.changes()
        };
        self.serve_events(plan.room, received_at, &mut batch)?;
        let mut fetched = Vec::new();
        self.read_partitions(plan.room.saturating_sub(batch.len()), &plan.read, &mut fetched);
        {
            let mut state = self.consumer.context().state();
            for message in &fetched {
                match message.error() {
                    None => batch.extend(self.receive(&mut state, message, received_at)),
                    Some(RDKafkaErrorCode::PartitionEOF) => {}
                    Some(code) => self.on_error(KafkaError::MessageConsumption(code))?,
                }
            }
        }
        drop(fetched); // librdkafka's copies, destroyed here on the poll thread
        if batch.is_empty() {
            self.wait(plan.room);
            return Ok(());
        }
        // A rebalance callback (or a rewind) may have changed the assignments while this batch was
        // read: then keep only the messages of partitions still assigned in the epoch they were
        // received in. Checked only then: it is a lookup a message.
        let state = self.consumer.context().state();
        let changed = state.offsets.changes() != changes_before;
        let current = batch
            .into_iter()
            .filter(|(partition, epoch, _)| !changed || state.offsets.is_current(*partition, *epoch))
            .map(|(partition, _, item)| (partition, item));
        self.buffer().push_batch(current);
        Ok(())
    }

    /// Nothing was read: waits for the doorbell, unless events are waiting already. With room, for a
    /// message or an event, up to [`IDLE_WAIT`]; without, for the reader to take some, up to
    /// [`BUSY_WAIT`] (acknowledgements, which free room too, do not ring).
    fn wait(&self, room: usize) {
        if self.consumer.context().queues().events_pending() {
            return;
        }
        if room == 0 {
            self.buffer()
                .ring_when_below(read_policy::low_water(self.consume_size) + 1);
            self.doorbell.wait(BUSY_WAIT);
        } else {
            self.doorbell.wait(IDLE_WAIT);
        }
    }

    /// Serves what waits on the main queue without waiting: rebalances, errors, commit results, and the
    /// messages of a partition whose queue could not be split off (up to `room`, and one even without:
    /// `poll()` hands out what comes first).
    fn serve_events(
        &self,
        room: usize,
        received_at: Instant,
        batch: &mut Vec<(i32, Epoch, Item<K, V>)>,
    ) -> Result<(), KafkaError> {
        loop {
            match self.consumer.poll(Duration::ZERO) {
                None => return Ok(()),
                Some(Ok(message)) => {
                    let mut state = self.consumer.context().state();
                    batch.extend(self.receive(&mut state, &message, received_at));
                    if batch.len() >= room {
                        return Ok(());
                    }
                }
                Some(Err(error)) => self.on_error(error)?,
            }
        }
    }

    /// Reads up to `room` messages from the queues of the partitions in `read`, each partition up to an
    /// equal part of what is left when its turn comes, starting one partition further each turn; again
    /// while some partition had more and room is left (the others had less than their part).
    fn read_partitions(&self, room: usize, read: &[i32], fetched: &mut Vec<RawMessage>) {
        if read.is_empty() || room == 0 {
            return;
        }
        let mut queues = self.consumer.context().queues();
        let start = self.rotation.get() % read.len();
        self.rotation.set(start + 1);
        loop {
            let before = fetched.len();
            let turn = read.iter().cycle().skip(start).take(read.len());
            for (index, &partition) in turn.enumerate() {
                let left = room.saturating_sub(fetched.len());
                if left == 0 {
                    return;
                }
                queues.read(partition, left.div_ceil(read.len() - index), fetched);
            }
            if fetched.len() == before {
                return;
            }
        }
    }

    /// A Kafka error from a poll or a batch: `Err` if it is fatal.
    fn on_error(&self, error: KafkaError) -> Result<(), KafkaError> {
        match error {
            KafkaError::PartitionEOF(_) => Ok(()),
            KafkaError::MessageConsumptionFatal(code) => Err(KafkaError::MessageConsumptionFatal(code)),
            error => {
                if let Some((code, reason)) = self.consumer.client().fatal_error() {
                    warn!(topic = %self.topic, error = %ErrorChain(&error), ?code, reason, "fatal error");
                    return Err(KafkaError::MessageConsumptionFatal(code));
                }
                // Transient: librdkafka reconnects and retries by itself. It reports the same error to the
                // context's error callback too, which logs it at warn level; here it is detail.
                debug!(topic = %self.topic, error = %ErrorChain(&error), "Kafka error; librdkafka retries");
                Ok(())
            }
        }
    }

    /// Registers a received message with the offset tracker and deserializes it.
    fn receive(
        &self,
        state: &mut PollState,
        message: &impl Fetched,
        received_at: Instant,
    ) -> Option<(i32, Epoch, Item<K, V>)> {
        let (partition, offset) = (message.partition(), message.offset());
        let Some(epoch) = register(state, self.buffer(), &self.topic, partition, offset, received_at) else {
            debug!(topic = %self.topic, partition, offset, "message of an unassigned partition dropped");
            return None;
        };
        let origin = Origin {
            partition,
            offset,
            timestamp: message.timestamp(),
            headers: message.headers(),
        };
        let acknowledgement = state.acknowledgements.track(Handled {
            partition,
            offset,
            epoch,
        });
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
        message: &impl Fetched,
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
                let (Request::Commit(reply) | Request::Close(reply)) = command;
                let _ = reply.send(Err(ConsumerError::Closed));
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
        // The queue handles point into the consumer: gone first (`fetch_queues`).
        self.consumer.context().queues().clear();
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
/// acknowledgements of the old epoch are ignored, so the reader would get them twice for nothing; and
/// the acknowledgements of the old epoch are forgotten. (Messages of the old epoch in the batch being
/// read are dropped when the batch is handed over.)
fn register<T>(
    state: &mut PollState,
    buffer: &DeliveryBuffer<T>,
    topic: &str,
    partition: i32,
    offset: i64,
    received_at: Instant,
) -> Option<Epoch> {
    // A move back starts a new epoch, which changes the assignments (without a lookup of its own).
    let changes = state.offsets.changes();
    let epoch = state.offsets.deliver(partition, offset, received_at)?;
    if state.offsets.changes() != changes {
        let dropped = buffer.remove_partition(partition);
        state.forget_stale_acknowledgements();
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
    use crate::kafka::offsets::OffsetTracker;

    #[test]
    fn a_position_moved_back_drops_the_partitions_buffered_messages_of_the_old_position() {
        let (_, requests) = std::sync::mpsc::channel();
        let mut state = PollState::new(OffsetTracker::default(), requests, "t".into());
        state.acknowledgements.reserve(6);
        let buffer: DeliveryBuffer<i64> = DeliveryBuffer::new(Arc::default(), 1);
        state.offsets.assign(0);
        state.offsets.assign(1);
        let now = Instant::now();
        let mut tokens = Vec::new();
        for offset in 10..13 {
            for partition in [0, 1] {
                let epoch = register(&mut state, &buffer, "t", partition, offset, now).expect("assigned");
                tokens.push(state.acknowledgements.track(Handled {
                    partition,
                    offset,
                    epoch,
                }));
            }
        }
        buffer.push_batch((10..13).flat_map(|offset| [(0, offset), (1, offset)]));
        assert_eq!(buffer.lengths().0, 6);

        let old = state.offsets.epoch(0);
        let new = register(&mut state, &buffer, "t", 0, 11, now);
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
        // Their acknowledgements are forgotten; partition 1's still count.
        for token in &tokens {
            token.acknowledge();
        }
        let mut collected = Vec::new();
        state
            .acknowledgements
            .collect(|handled| collected.push((handled.partition, handled.offset)));
        assert_eq!(collected, [(1, 10), (1, 11), (1, 12)]);

        // Forward, in the same epoch: nothing dropped.
        buffer.push_batch([(0, 11)]);
        assert_eq!(register(&mut state, &buffer, "t", 0, 12, now), new);
        assert_eq!(buffer.lengths().0, 4);
    }
}
