//! `ChannelConsumer` across a Kafka crash: the broker is killed (`kill -9`) and restarted under a
//! running consumer. Its own binary, with its own stack, because it takes Kafka away from everyone.
//!
//! The consumer must treat the outage as transient: log, let librdkafka reconnect, and go on; the stream
//! must neither end nor yield an error, and the checker must find nothing lost.

mod support;

use std::sync::Arc;
use std::time::Duration;

use service::kafka::ChannelConsumer;

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
    let stack = harness::Stack::start(harness::StackOptions {
        backend: Some(harness::Backend::Local),
        kafka_nodes: 1,
        topics: vec![harness::TopicSpec::new(topic, PARTITIONS)],
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
    Ok(())
}
