//! The errors of the Kafka consumer: what can go wrong building it, reading from it, committing with it.
//!
//! One error type, [`ConsumerError`], for the whole consumer, so that `message?` works in a read loop and
//! `ChannelConsumer::new(..)?` in set-up code. Each variant says where it can appear. A message that
//! cannot be deserialized is an error *item* of the stream, not the end of it: it carries the raw message
//! and the means to acknowledge it (see [`UndecodableMessage`]).

use std::fmt;

use rdkafka::error::KafkaError;

use super::message::UndecodableMessage;

/// Everything the consumer can report.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// At construction: a setting the consumer cannot work with (no `group.id`, `consume_size` of 0, ...).
    #[error("invalid consumer configuration: {0}")]
    InvalidConfig(String),

    /// At construction: `None` was passed as a deserializer for a type that has no default one.
    #[error("no default deserializer for the {part} type `{type_name}`: pass one explicitly")]
    NoDefaultDeserializer {
        part: MessagePart,
        type_name: &'static str,
    },

    /// At construction: librdkafka refused the configuration or the subscription.
    #[error("cannot create the Kafka consumer")]
    Client(#[source] KafkaError),

    /// At construction: the operating system refused to start the poll thread.
    #[error("cannot start the consumer's poll thread")]
    Thread(#[source] std::io::Error),

    /// A stream item: one message whose key or value did not deserialize. The stream goes on after it.
    /// The message still counts for offset progress: acknowledge it with
    /// [`UndecodableMessage::handle`] once it is dealt with (dead-lettered, logged), or its partition's
    /// committed offset stays behind it forever.
    #[error(transparent)]
    Undecodable(Box<UndecodableMessage>),

    /// The last stream item: librdkafka reported a fatal error and the consumer stopped.
    #[error("fatal Kafka consumer error")]
    Fatal(#[source] KafkaError),

    /// From `commit()` or `close()`: the broker did not accept the commit.
    #[error("committing offsets failed")]
    Commit(#[source] KafkaError),

    /// From `commit()` or `close()`: the consumer has already stopped (closed, or ended by a fatal error).
    #[error("the consumer is closed")]
    Closed,

    /// From `close()`: the poll thread did not finish closing (final commit, LeaveGroup) within the
    /// consumer's close timeout, typically because Kafka is unreachable. The thread is left to finish
    /// on its own; what it did not commit comes again to the partitions' next owner.
    #[error("the consumer did not close within {0:?}")]
    CloseTimedOut(std::time::Duration),

    /// The last stream item if the consumer's poll thread panicked (a bug in this crate).
    #[error("the consumer's poll thread panicked")]
    PollThreadPanicked,
}

impl ConsumerError {
    /// The undecodable message, if this is a deserialization failure.
    pub fn undecodable(&self) -> Option<&UndecodableMessage> {
        match self {
            Self::Undecodable(message) => Some(message),
            _ => None,
        }
    }
}

/// Which part of a message a deserializer was reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePart {
    Key,
    Value,
}

impl fmt::Display for MessagePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Key => "key",
            Self::Value => "value",
        })
    }
}

/// Why some bytes are not a `T`.
#[derive(Debug, thiserror::Error)]
pub enum DeserializeError {
    /// The key or value was null (absent), and the type has no null.
    #[error("null where a value was expected")]
    Null,

    /// A fixed-width type got the wrong number of bytes.
    #[error("expected {expected} bytes, got {actual}")]
    Length { expected: usize, actual: usize },

    #[error("invalid UTF-8")]
    Utf8(#[from] std::str::Utf8Error),

    #[error("invalid protobuf message")]
    Protobuf(#[from] prost::DecodeError),

    /// For user-written deserializers.
    #[error("{0}")]
    Custom(Box<dyn std::error::Error + Send + Sync>),
}
