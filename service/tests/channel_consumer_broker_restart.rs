//! `ChannelConsumer` across a Kafka crash: the broker is killed (`kill -9`) and restarted under a
//! running consumer. Its own binary, with its own stack, because it takes Kafka away from everyone.
//!
//! The consumer must treat the outage as transient: log, let librdkafka reconnect, and go on; the stream
//! must neither end nor yield an error, and the checker must find nothing lost. Then Kafka is killed for
//! good, and `close()` and drop of members with offsets to commit must still return within their close
//! timeout.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use service::kafka::ChannelConsumer;
use tokio_stream::StreamExt;

use support::channel_consumer_checker::History;
use support::channel_consumer_fixtures::{
    Assignment, Leave, Member, TestResult, consumer_config, init_tracing, produce, producer, record_commits,
    wait_until_all_handled,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_crash_is_survived_without_losing_messages() -> TestResult {
    init_tracing();
    const PARTITIONS: i32 = 3;
    let (topic, group) = ("broker-restart", "broker-restart-group");
    harness::app::require_own_stack_group();
    let stack = harness::Stack::start(harness::StackOptions {
        backend: Some(harness::Backend::Local),
        kafka_nodes: 1,
        topics: vec![harness::TopicSpec::new(topic, PARTITIONS)],
        ..harness::StackOptions::default()
    })
    .await?;
    let brokers = stack.kafka_brokers();
    let history = Arc::new(History::new());

    let consumer = ChannelConsumer::<i64, String>::new(
        consumer_config(brokers, group, Assignment::CooperativeSticky),
        topic,
        500,
        None,
        None,
    )?;
    let member = Member::spawn(0, consumer, history.clone(), Duration::ZERO);
    produce(&producer(brokers)?, topic, PARTITIONS, 0, 300, &history).await?;
    assert!(
        wait_until_all_handled(&history, Duration::from_secs(60)).await,
        "{}",
        history.check()
    );

    stack.kill(harness::Service::Kafka(0)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.start_service(harness::Service::Kafka(0)).await?;

    produce(&producer(brokers)?, topic, PARTITIONS, 300, 300, &history).await?;
    assert!(
        wait_until_all_handled(&history, Duration::from_secs(90)).await,
        "{}",
        history.check()
    );
    // The member's task fails if the stream ended or yielded an error during the outage.
    member.leave(Leave::Close).await?;
    record_commits(brokers, group, topic, PARTITIONS, &history).await?;

    let report = history.check();
    println!("--- broker restart\n{report}");
    assert!(report.is_valid(), "{report}");

    // Then Kafka goes for good: closing, and dropping, still end within the close timeout.
    let mut closing = member_with_work(brokers, topic, "close-after-kafka-left").await?;
    let mut dropping = member_with_work(brokers, topic, "drop-after-kafka-left").await?;
    assert_eq!(
        read_and_handle(&mut closing, 10).await,
        10,
        "the closing member read"
    );
    assert_eq!(
        read_and_handle(&mut dropping, 10).await,
        10,
        "the dropping member read"
    );
    stack.kill(harness::Service::Kafka(0)).await?;

    let started = Instant::now();
    let closed = closing.close().await;
    let close_took = started.elapsed();
    println!("close without Kafka: {closed:?} after {close_took:?}");
    assert!(
        close_took < CLOSE_TIMEOUT + Duration::from_secs(2),
        "close() took {close_took:?} ({closed:?})"
    );
    let started = Instant::now();
    drop(dropping);
    let drop_took = started.elapsed();
    println!("drop without Kafka: after {drop_took:?}");
    assert!(
        drop_took < CLOSE_TIMEOUT + Duration::from_secs(2),
        "drop took {drop_took:?}"
    );
    Ok(())
}

/// The close timeout of the members that see Kafka go.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A member of a group of its own, committing only on close (so that closing has a commit to make).
async fn member_with_work(
    brokers: &str,
    topic: &str,
    group: &str,
) -> TestResult<ChannelConsumer<i64, String>> {
    let mut config = consumer_config(brokers, group, Assignment::CooperativeSticky);
    config.set("enable.auto.commit", "false");
    Ok(ChannelConsumer::builder(config, topic)
        .consume_size(100)
        .close_timeout(CLOSE_TIMEOUT)
        .build()?)
}

/// Reads and handles up to `count` messages, for at most 30 s; how many it read.
async fn read_and_handle(consumer: &mut ChannelConsumer<i64, String>, count: usize) -> usize {
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(message))) => {
                message.handle();
                read += 1;
            }
            _ => break,
        }
    }
    read
}
