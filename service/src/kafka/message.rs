//! A message as the stream hands it out: deserialized, detached from librdkafka, and able to mark itself
//! handled.
//!
//! [`KafkaMessage`] is the seed's `KafkaMessage<TKey, TValue>`: the key, the value, the metadata, and
//! [`handle`](KafkaMessage::handle). [`UndecodableMessage`] is what a message becomes when its key or
//! value does not deserialize: it keeps the raw bytes (to dead-letter them) and can be handled too, so
//! that one poison message does not hold its partition's committed offset back forever.

use std::fmt;

use rdkafka::Timestamp;
use rdkafka::message::OwnedHeaders;

use super::acknowledgement::Acknowledgement;
use super::error::{DeserializeError, MessagePart};
use super::offsets::Epoch;

/// Where a message came from: partition, offset, and the broker's metadata (the topic is in its
/// [`Acknowledgement`], shared by its batch).
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Timestamp,
    pub headers: Option<OwnedHeaders>,
}

/// One message of the stream.
///
/// Call [`handle`](Self::handle) once it is processed; until then its offset, and every later one of
/// its partition, stays uncommitted.
#[derive(Debug)]
pub struct KafkaMessage<K, V> {
    key: K,
    value: V,
    origin: Origin,
    acknowledgement: Acknowledgement,
}

impl<K, V> KafkaMessage<K, V> {
    pub(crate) fn new(key: K, value: V, origin: Origin, acknowledgement: Acknowledgement) -> Self {
        Self {
            key,
            value,
            origin,
            acknowledgement,
        }
    }

    pub fn key(&self) -> &K {
        &self.key
    }

    pub fn value(&self) -> &V {
        &self.value
    }

    /// The key and the value, by value; the message can still be handled through the returned
    /// [`MessageReceipt`].
    pub fn into_parts(self) -> (K, V, MessageReceipt) {
        (
            self.key,
            self.value,
            MessageReceipt {
                origin: self.origin,
                acknowledgement: self.acknowledgement,
            },
        )
    }

    pub fn topic(&self) -> &str {
        self.acknowledgement.topic()
    }

    pub fn partition(&self) -> i32 {
        self.origin.partition
    }

    pub fn offset(&self) -> i64 {
        self.origin.offset
    }

    pub fn timestamp(&self) -> Timestamp {
        self.origin.timestamp
    }

    /// The message's headers; read them with [`rdkafka::message::Headers`].
    pub fn headers(&self) -> Option<&OwnedHeaders> {
        self.origin.headers.as_ref()
    }

    /// Which assignment of its partition this message was delivered in. Within one epoch a partition's
    /// messages come in offset order without gaps; a new epoch starts when the partition is (re)assigned
    /// to this consumer, and may re-deliver messages. For observers and tests; processing needs it not.
    pub fn assignment_epoch(&self) -> Epoch {
        self.acknowledgement.epoch()
    }

    /// Marks the message processed. Cheap and non-blocking; calling it twice, or after the partition was
    /// revoked, is harmless. See the module documentation for what is stored and committed when.
    pub fn handle(&self) {
        self.acknowledgement.acknowledge();
    }
}

/// What remains of a [`KafkaMessage`] after [`into_parts`](KafkaMessage::into_parts): its metadata and
/// the means to handle it.
#[derive(Debug, Clone)]
pub struct MessageReceipt {
    origin: Origin,
    acknowledgement: Acknowledgement,
}

impl MessageReceipt {
    pub fn topic(&self) -> &str {
        self.acknowledgement.topic()
    }

    pub fn partition(&self) -> i32 {
        self.origin.partition
    }

    pub fn offset(&self) -> i64 {
        self.origin.offset
    }

    pub fn handle(&self) {
        self.acknowledgement.acknowledge();
    }
}

/// A message whose key or value did not deserialize (a "poison" message), delivered as
/// [`ConsumerError::Undecodable`](super::ConsumerError::Undecodable) in its place in the partition.
///
/// It keeps the raw bytes, so that the caller can dead-letter it, and it must be
/// [`handle`](Self::handle)d like any message once that is done: otherwise its partition's committed
/// offset can never move past it.
#[derive(Debug)]
pub struct UndecodableMessage {
    origin: Origin,
    raw_key: Option<Vec<u8>>,
    raw_value: Option<Vec<u8>>,
    part: MessagePart,
    source: DeserializeError,
    acknowledgement: Acknowledgement,
}

impl UndecodableMessage {
    pub(crate) fn new(
        origin: Origin,
        raw_key: Option<Vec<u8>>,
        raw_value: Option<Vec<u8>>,
        part: MessagePart,
        source: DeserializeError,
        acknowledgement: Acknowledgement,
    ) -> Self {
        Self {
            origin,
            raw_key,
            raw_value,
            part,
            source,
            acknowledgement,
        }
    }

    pub fn topic(&self) -> &str {
        self.acknowledgement.topic()
    }

    pub fn partition(&self) -> i32 {
        self.origin.partition
    }

    pub fn offset(&self) -> i64 {
        self.origin.offset
    }

    pub fn timestamp(&self) -> Timestamp {
        self.origin.timestamp
    }

    pub fn headers(&self) -> Option<&OwnedHeaders> {
        self.origin.headers.as_ref()
    }

    /// The key's bytes as received (`None`: a null key).
    pub fn raw_key(&self) -> Option<&[u8]> {
        self.raw_key.as_deref()
    }

    /// The value's bytes as received (`None`: a null value, a tombstone).
    pub fn raw_value(&self) -> Option<&[u8]> {
        self.raw_value.as_deref()
    }

    /// Which part failed to deserialize.
    pub fn failed_part(&self) -> MessagePart {
        self.part
    }

    pub fn deserialize_error(&self) -> &DeserializeError {
        &self.source
    }

    /// See [`KafkaMessage::assignment_epoch`].
    pub fn assignment_epoch(&self) -> Epoch {
        self.acknowledgement.epoch()
    }

    /// Marks the message processed (typically: after it was dead-lettered), exactly like
    /// [`KafkaMessage::handle`].
    pub fn handle(&self) {
        self.acknowledgement.acknowledge();
    }
}

impl fmt::Display for UndecodableMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot deserialize the {} of the message at topic {}, partition {}, offset {}",
            self.part,
            self.acknowledgement.topic(),
            self.origin.partition,
            self.origin.offset
        )
    }
}

impl std::error::Error for UndecodableMessage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
