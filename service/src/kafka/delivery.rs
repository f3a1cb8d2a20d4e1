//! A message on its way from the poll thread to the reader: kept as librdkafka gave it until the reader
//! takes it, and decoded then, on the reader's thread.
//!
//! Why there: the poll thread is the consumer's narrow point. It is one thread, and librdkafka's side
//! of every message (taking it off the partition's queue, and its bookkeeping) has to happen on it.
//! Decoding (copying the key and the value into owned values, reading the timestamp and the headers)
//! and freeing librdkafka's copy can happen anywhere, so they happen on the reader's side, in
//! `poll_next`, and the two threads share the work. (Measured: decoding on the poll thread, it was
//! about half of all the process's CPU samples in a 12-partition drain, and the reader an eighth.)

use std::fmt;

use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::{Message, Timestamp};
use tracing::warn;

use super::acknowledgement::Acknowledgement;
use super::deserializer::Deserializer;
use super::error::{ConsumerError, DeserializeError, MessagePart};
use super::fetch_queues::{Fetched, RawMessage};
use super::message::{KafkaMessage, Origin, UndecodableMessage};

/// What the stream yields.
pub type Item<K, V> = Result<KafkaMessage<K, V>, ConsumerError>;

/// What the delivery buffer holds.
pub(crate) enum Delivery {
    /// From a partition's queue, as librdkafka gave it.
    Raw(RawMessage, Acknowledgement),
    /// From the main queue (a partition whose queue could not be split off): copied out of librdkafka
    /// at once, since a message polled there borrows the consumer.
    Owned(OwnedMessage, Acknowledgement),
    /// The stream's last item.
    Failed(ConsumerError),
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Raw(message, _) => write!(f, "Raw({}@{})", message.partition(), message.offset()),
            Self::Owned(message, _) => write!(f, "Owned({}@{})", Message::partition(message), Message::offset(message)),
            Self::Failed(error) => write!(f, "Failed({error})"),
        }
    }
}

impl From<(RawMessage, Acknowledgement)> for Delivery {
    fn from((message, acknowledgement): (RawMessage, Acknowledgement)) -> Self {
        Self::Raw(message, acknowledgement)
    }
}

impl From<(OwnedMessage, Acknowledgement)> for Delivery {
    fn from((message, acknowledgement): (OwnedMessage, Acknowledgement)) -> Self {
        Self::Owned(message, acknowledgement)
    }
}

/// The key and value deserializers, on the reader's side.
pub(crate) struct Decoder<K, V> {
    pub key: Box<dyn Deserializer<K>>,
    pub value: Box<dyn Deserializer<V>>,
}

impl<K, V> Decoder<K, V> {
    /// The stream's item for `delivery`.
    pub fn decode(&self, delivery: Delivery) -> Item<K, V> {
        match delivery {
            Delivery::Raw(message, acknowledgement) => self.decode_message(&message, acknowledgement),
            Delivery::Owned(message, acknowledgement) => self.decode_message(&message, acknowledgement),
            Delivery::Failed(error) => Err(error),
        }
    }

    fn decode_message(&self, message: &impl Fetched, acknowledgement: Acknowledgement) -> Item<K, V> {
        let origin = Origin {
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp(),
            headers: message.headers(),
        };
        let key = self.key.deserialize(message.key());
        let value = self.value.deserialize(message.payload());
        match (key, value) {
            (Ok(key), Ok(value)) => Ok(KafkaMessage::new(key, value, origin, acknowledgement)),
            (Err(error), _) => Err(undecodable(message, origin, MessagePart::Key, error, acknowledgement)),
            (_, Err(error)) => Err(undecodable(message, origin, MessagePart::Value, error, acknowledgement)),
        }
    }
}

fn undecodable(
    message: &impl Fetched,
    origin: Origin,
    part: MessagePart,
    error: DeserializeError,
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

impl Fetched for OwnedMessage {
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
        Message::headers(self).cloned()
    }
}
