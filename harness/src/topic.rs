//! What the orders topic holds, read from the source: every message from the beginning of each partition
//! to the end it had when the read began, decoded. The consistency checks use it to see which versions
//! were published; tests, to see what an event said.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use service::proto::orders::v1 as pb;

/// An event found in the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub partition: i32,
    pub offset: i64,
    pub event: pb::OrderEvent,
    /// The message's headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Published {
    /// The value of the first header named `key`, as text.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka")]
    Kafka(#[from] KafkaError),
    /// A read that ends early would look like events never published: it is an error, not a result.
    #[error("partition {partition} read up to offset {read} of {end} within {within:?}")]
    Incomplete {
        partition: i32,
        read: i64,
        end: i64,
        within: Duration,
    },
    #[error("the reading task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Every event of `topic` up to its current end, within `within`. Messages that are not an
/// `OrderEvent` (poison a test produced) are skipped.
pub async fn read_events(brokers: &str, topic: &str, within: Duration) -> Result<Vec<Published>, TopicError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-audit"))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read(&consumer, &topic, within)).await?
}

fn read(consumer: &BaseConsumer, topic: &str, within: Duration) -> Result<Vec<Published>, TopicError> {
    let deadline = Instant::now() + within;
    let metadata = consumer.fetch_metadata(Some(topic), within)?;
    let mut ends = HashMap::new();
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, end) = consumer.fetch_watermarks(topic, partition.id(), within)?;
        if end > 0 {
            ends.insert(partition.id(), end);
            list.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&list)?;
    let mut published = Vec::new();
    let mut positions: HashMap<i32, i64> = HashMap::new();
    while let Some((&partition, &end)) = ends
        .iter()
        .find(|&(partition, end)| positions.get(partition).copied().unwrap_or(0) < *end)
    {
        if Instant::now() > deadline {
            let read = positions.get(&partition).copied().unwrap_or(0);
            return Err(TopicError::Incomplete {
                partition,
                read,
                end,
                within,
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        positions.insert(message.partition(), message.offset() + 1);
        if let Some(event) = message
            .payload()
            .and_then(|payload| <pb::OrderEvent as prost::Message>::decode(payload).ok())
        {
            let headers = message.headers().map_or_else(Vec::new, |headers| {
                headers
                    .iter()
                    .map(|header| (header.key.to_string(), header.value.unwrap_or_default().to_vec()))
                    .collect()
            });
            published.push(Published {
                partition: message.partition(),
                offset: message.offset(),
                event,
                headers,
            });
        }
    }
    Ok(published)
}
