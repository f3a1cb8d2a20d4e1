//! One librdkafka queue per assigned partition, read in batches.
//!
//! `BaseConsumer::poll` hands out one message per call, and every call pays for a trip through
//! librdkafka's event API (a lock, clock readings, an event wrapper allocated for the message). Its
//! batch call, `rd_kafka_consume_batch_queue`, returns up to N messages for one such trip: on the
//! benchmark's topics a loop over batches of 1,000 drained 1.6–1.8× as fast as the `poll()` loop,
//! copying every value (scratch probe, 1,000,000 messages of 100 B, 1/3/12 partitions). But it cannot
//! read the consumer's main queue: rdkafka serves rebalances as *events* of that queue, and the batch
//! call, meeting one, would force an unassign instead. So each partition's fetch queue is split off
//! from the main queue (before librdkafka starts fetching it: in the rebalance callback, before the
//! assignment takes effect), and read here in batches; the main queue is left with the events
//! (rebalances, errors, commit results, statistics), which the poll thread serves with `poll()` as
//! before.
//!
//! A queue per partition also makes the hand-over fair: the poll thread reads the partitions in turn,
//! each up to its share of the batch, where one shared queue gives out whatever librdkafka fetched
//! first (with backlogs on several partitions, a whole fetch of one of them before any of the others).
//!
//! The poll thread waits on its `doorbell` for all these queues: librdkafka rings it when a queue that
//! was empty gets something (a fetch response, an event).
//!
//! # Safety
//!
//! Queue handles and the doorbell's callback point into librdkafka's consumer, so they must be gone
//! before it is destroyed: [`FetchQueues::clear`] disables every callback and destroys every handle, and
//! the poll thread calls it before it drops the consumer (also when it unwinds: see `poll_loop`).
//! librdkafka calls the doorbell with the queue's lock held, from its own threads; disabling the
//! callback takes that lock, so once [`FetchQueues::clear`] returned no call is in flight.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_void};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::{Message, Timestamp};

use super::doorbell::Doorbell;
use rdkafka::types::RDKafkaErrorCode;

/// librdkafka's queue callback: runs on a librdkafka thread, with the queue's lock held.
unsafe extern "C" fn ring(_client: *mut rd::rd_kafka_t, doorbell: *mut c_void) {
    // SAFETY: `doorbell` is the `Arc<Doorbell>` of the `FetchQueues` that enabled this callback, which
    // keeps it alive until it disabled the callback again.
    unsafe { &*(doorbell as *const Doorbell) }.ring();
}

/// A librdkafka queue handle with the doorbell as its callback.
struct QueueHandle(NonNull<rd::rd_kafka_queue_t>);

impl QueueHandle {
    fn new(queue: *mut rd::rd_kafka_queue_t, doorbell: &Arc<Doorbell>) -> Option<Self> {
        let queue = NonNull::new(queue)?;
        // SAFETY: a live handle; the doorbell outlives the callback (see `Drop`).
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(
                queue.as_ptr(),
                Some(ring),
                Arc::as_ptr(doorbell) as *mut c_void,
            )
        };
        Some(Self(queue))
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        // SAFETY: the handle is live until `rd_kafka_queue_destroy`, which only drops this reference
        // (these handles do not own their queues).
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.0.as_ptr(), None, ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.0.as_ptr());
        }
    }
}

/// The assigned partitions' fetch queues, split off from the consumer's main queue.
pub(crate) struct FetchQueues {
    topic: CString,
    doorbell: Arc<Doorbell>,
    /// The main queue's handle, only for its callback: events ring the doorbell too.
    events: Option<QueueHandle>,
    partitions: BTreeMap<i32, QueueHandle>,
    /// Room for the batch call's message pointers, kept between calls.
    scratch: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka's queue handles may be used from any thread; only the poll thread uses these.
unsafe impl Send for FetchQueues {}

impl FetchQueues {
    pub fn new(topic: &str, doorbell: Arc<Doorbell>) -> Self {
        Self {
            // A topic name with a NUL cannot be subscribed to: librdkafka refuses it first.
            topic: CString::new(topic).unwrap_or_default(),
            doorbell,
            events: None,
            partitions: BTreeMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Has events on the main queue ring the doorbell. `client` must be the consumer's.
    pub fn watch_events(&mut self, client: *mut rd::rd_kafka_t) {
        // SAFETY: a live client; the handle is destroyed in `clear`, before the client.
        self.events = QueueHandle::new(unsafe { rd::rd_kafka_queue_get_consumer(client) }, &self.doorbell);
    }

    /// Splits `partition`'s fetch queue off the main queue. Call it before librdkafka starts fetching
    /// the partition (a split later leaves what was fetched before on the main queue). `false` if
    /// librdkafka does not know the partition; its messages then come through the main queue.
    pub fn split(&mut self, client: *mut rd::rd_kafka_t, partition: i32) -> bool {
        if self.partitions.contains_key(&partition) {
            // Already split (assigned again without a revocation between). A second handle would be
            // to the same queue, and dropping the first would disable the callback both share.
            return true;
        }
        // SAFETY: a live client and a valid C string. Forwarding to nothing detaches the fetch queue from
        // the main queue, and librdkafka keeps it so across reassignments (an application forward).
        let handle = unsafe {
            let queue = rd::rd_kafka_queue_get_partition(client, self.topic.as_ptr(), partition);
            if !queue.is_null() {
                rd::rd_kafka_queue_forward(queue, ptr::null_mut());
            }
            QueueHandle::new(queue, &self.doorbell)
        };
        match handle {
            Some(handle) => {
                self.partitions.insert(partition, handle);
                true
            }
            None => false,
        }
    }

    /// Stops reading `partition` (revoked).
    pub fn remove(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Stops reading every partition (the assignment is gone).
    pub fn remove_all(&mut self) {
        self.partitions.clear();
    }

    /// Whether events wait on the main queue (one `poll()` serves one).
    pub fn events_pending(&self) -> bool {
        // SAFETY: a live handle.
        self.events
            .as_ref()
            .is_some_and(|events| unsafe { rd::rd_kafka_queue_length(events.0.as_ptr()) } > 0)
    }

    /// Whether `partition` has messages fetched and not read yet.
    pub fn waiting(&self, partition: i32) -> bool {
        // SAFETY: a live handle.
        self.partitions
            .get(&partition)
            .is_some_and(|queue| unsafe { rd::rd_kafka_queue_length(queue.0.as_ptr()) } > 0)
    }

    /// Disables every callback and destroys every handle; see the module's safety note.
    pub fn clear(&mut self) {
        self.partitions.clear();
        self.events = None;
    }

    /// Moves up to `max` of `partition`'s messages (and errors) to `out`, without waiting.
    pub fn read(&mut self, partition: i32, max: usize, out: &mut Vec<RawMessage>) {
        let Some(queue) = self.partitions.get(&partition) else {
            return;
        };
        self.scratch.clear();
        self.scratch.reserve(max);
        // SAFETY: a live handle and room for `max` pointers, of which librdkafka fills the first `count`.
        let count =
            unsafe { rd::rd_kafka_consume_batch_queue(queue.0.as_ptr(), 0, self.scratch.as_mut_ptr(), max) };
        let count = usize::try_from(count).unwrap_or(0).min(max);
        // SAFETY: librdkafka wrote `count` message pointers, each ours to destroy.
        unsafe { self.scratch.set_len(count) };
        out.extend(self.scratch.drain(..).filter_map(NonNull::new).map(RawMessage));
    }
}

impl Drop for FetchQueues {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A message (or a per-partition error) from librdkafka's batch call; destroyed on drop.
pub(crate) struct RawMessage(NonNull<rd::rd_kafka_message_t>);

// SAFETY: a consumed message belongs to whoever holds it; librdkafka's destroy may run on any thread.
unsafe impl Send for RawMessage {}

impl RawMessage {
    fn inner(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: live until drop.
        unsafe { self.0.as_ref() }
    }

    /// The error this entry stands for, if it is one (end of partition, offset out of range, ...).
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        let code = self.inner().err;
        (code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| code.into())
    }
}

/// A fetched message as the poll thread reads it: from a batch ([`RawMessage`]), or from `poll()` on
/// the main queue (a `BorrowedMessage`, of a partition that could not be split off).
pub(crate) trait Fetched {
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    fn timestamp(&self) -> Timestamp;
    /// A copy of the headers, if the message has any.
    fn headers(&self) -> Option<OwnedHeaders>;
}

impl Fetched for BorrowedMessage<'_> {
    fn partition(&self) -> i32 {
        Message::partition(self)
    }

    fn offset(&self) -> i64 {
        Message::offset(self)
    }

    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }

    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn timestamp(&self) -> Timestamp {
        Message::timestamp(self)
    }

    fn headers(&self) -> Option<OwnedHeaders> {
        Message::headers(self).map(|headers| headers.detach())
    }
}

impl Fetched for RawMessage {
    fn partition(&self) -> i32 {
        self.inner().partition
    }

    fn offset(&self) -> i64 {
        self.inner().offset
    }

    fn key(&self) -> Option<&[u8]> {
        let inner = self.inner();
        // SAFETY: librdkafka's key pointer and length, live as long as the message.
        (!inner.key.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(inner.key as *const u8, inner.key_len) })
    }

    fn payload(&self) -> Option<&[u8]> {
        let inner = self.inner();
        // SAFETY: as for the key.
        (!inner.payload.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(inner.payload as *const u8, inner.len) })
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message.
        let millis = unsafe { rd::rd_kafka_message_timestamp(self.0.as_ptr(), &mut kind) };
        match kind {
            _ if millis == -1 => Timestamp::NotAvailable,
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => Timestamp::CreateTime(millis),
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(millis)
            }
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<OwnedHeaders> {
        let mut headers = ptr::null_mut();
        // SAFETY: a live message; the headers stay the message's.
        let found = unsafe { rd::rd_kafka_message_headers(self.0.as_ptr(), &mut headers) };
        // SAFETY: `headers` is checked before it is read.
        if found != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || headers.is_null()
            || unsafe { rd::rd_kafka_header_cnt(headers) } == 0
        {
            return None;
        }
        let mut owned = OwnedHeaders::new();
        for index in 0.. {
            let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0usize);
            // SAFETY: `headers` is live; librdkafka says when `index` is past the end.
            let got =
                unsafe { rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size) };
            if got != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: a NUL-terminated name and `size` bytes of value (or none), owned by the headers.
            let (key, value) = unsafe {
                (
                    CStr::from_ptr(name).to_string_lossy(),
                    (!value.is_null()).then(|| std::slice::from_raw_parts(value as *const u8, size)),
                )
            };
            owned = owned.insert(Header { key: &key, value });
        }
        Some(owned)
    }
}

impl Drop for RawMessage {
    fn drop(&mut self) {
        // SAFETY: ours, destroyed once.
        unsafe { rd::rd_kafka_message_destroy(self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;

    const TOPIC: &str = "split";
    const PER_PARTITION: i64 = 10;

    /// `PER_PARTITION` messages to each of partitions 0 and 1 (payload `p:offset`), the fourth of
    /// partition 1 with a header.
    fn produce(bootstrap: &str) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("producer");
        for partition in 0..2 {
            for index in 0..PER_PARTITION {
                let payload = format!("{partition}:{index}");
                let mut record = BaseRecord::<(), str>::to(TOPIC)
                    .partition(partition)
                    .payload(&payload);
                if partition == 1 && index == 3 {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: "traceparent",
                        value: Some("00-abc-def-01"),
                    }));
                }
                producer.send(record).expect("queued");
            }
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");
    }

    #[test]
    fn each_split_queue_hands_out_its_own_partition_in_order_in_batches_and_rings_the_doorbell() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(TOPIC, 2, 1).expect("topic");
        produce(&cluster.bootstrap_servers());
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "split-test")
            .create()
            .expect("consumer");
        let client = consumer.client().native_ptr();
        let doorbell = Arc::new(Doorbell::default());
        let mut queues = FetchQueues::new(TOPIC, doorbell.clone());
        queues.watch_events(client);
        assert!(queues.split(client, 0) && queues.split(client, 1));
        assert!(queues.split(client, 1), "splitting again keeps the queue");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..2 {
            assignment
                .add_partition_offset(TOPIC, partition, Offset::Beginning)
                .expect("listed");
        }
        // Reset before the assignment: the first fetch may land (and ring) at once.
        doorbell.reset();
        consumer.assign(&assignment).expect("assigned");

        let (mut first, mut second) = (Vec::new(), Vec::new());
        let mut largest_read = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        let started = Instant::now();
        doorbell.wait(Duration::from_secs(15));
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no ring when messages arrived"
        );
        while (first.len() as i64) < PER_PARTITION || (second.len() as i64) < PER_PARTITION {
            assert!(
                Instant::now() < deadline,
                "read {} and {}",
                first.len(),
                second.len()
            );
            doorbell.reset();
            let before = first.len();
            queues.read(0, 4, &mut first);
            largest_read = largest_read.max(first.len() - before);
            queues.read(1, 100, &mut second);
            assert!(
                consumer.poll(Duration::ZERO).is_none(),
                "a message on the main queue"
            );
            doorbell.wait(Duration::from_millis(100));
        }
        assert_eq!(largest_read, 4, "a read hands out at most what it asks for");
        for (partition, messages) in [(0, &first), (1, &second)] {
            let seen: Vec<(i32, i64, String)> = messages
                .iter()
                .map(|m| {
                    let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    (m.partition(), m.offset(), payload)
                })
                .collect();
            let expected: Vec<(i32, i64, String)> = (0..PER_PARTITION)
                .map(|offset| (partition, offset, format!("{partition}:{offset}")))
                .collect();
            assert_eq!(seen, expected);
            assert!(messages.iter().all(|m| m.error().is_none()));
        }
        let with_headers: Vec<i64> = second
            .iter()
            .filter_map(|m| m.headers().map(|headers| (m.offset(), headers)))
            .map(|(offset, headers)| {
                let header = headers.get(0);
                assert_eq!(
                    (header.key, header.value),
                    ("traceparent", Some(&b"00-abc-def-01"[..]))
                );
                offset
            })
            .collect();
        assert_eq!(with_headers, vec![3], "headers only where there are some");
        assert!(first.iter().all(|m| m.headers().is_none()));
        drop((first, second));
        queues.clear();
    }
}
