//! The lag of a consumer group on a topic, as Kafka's own `kafka-consumer-groups --describe` computes it:
//! per partition, the high watermark minus the group's committed offset (all of it where the group has
//! committed nothing). For scripts that wait until a consumer has read everything (`stack lag`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Messages of `topic` that `group` has not committed yet, summed over the partitions. Blocking.
pub fn group_lag(brokers: &str, group: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("log_level", "3")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, TIMEOUT)?;
    let mut lag = 0;
    for element in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(topic, element.partition(), TIMEOUT)?;
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            _ => low,
        };
        lag += (high - position).max(0);
    }
    Ok(lag)
}

/// Messages `topic` ever held, summed over its partitions (the high watermarks). Blocking.
pub fn end_offsets(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let mut end = 0;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        end += consumer.fetch_watermarks(topic, partition.id(), TIMEOUT)?.1;
    }
    Ok(end)
}
