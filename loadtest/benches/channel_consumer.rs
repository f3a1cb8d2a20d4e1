//! `ChannelConsumer` against plain rdkafka consumers, on a real Kafka broker (the local stack).
//!
//! One topic per partition count (1, 3, 12), each pre-produced with `BENCH_MESSAGES` messages of 100
//! bytes (default 200,000; the full size is `BENCH_MESSAGES=1000000`). Every iteration drains a
//! whole topic with a new consumer group (so it reads from the start), with one of:
//!
//! * `ChannelConsumer`: `consume_size` 1000, read as batches through `chunks_timeout(1000, 10 ms)`,
//!   `handle()` on every message, each value handed out as an owned `Bytes` (its default
//!   deserializer for `Bytes`, which copies values into shared chunks; `BENCH_CHANNEL_VALUE=vec` for a
//!   `Vec<u8>` each);
//! * `BaseConsumer`: rdkafka's plain poll loop, one `poll()` per message, storing each offset;
//! * `StreamConsumer`: rdkafka's async consumer, one `recv().await` per message, storing each offset;
//! * `kcat`: librdkafka's own command-line consumer (Debian's, on Debian's librdkafka), in a group,
//!   printing each offset, which the benchmark reads as it comes (`-f '%o\n'`);
//! * `kafka-consumer-perf-test`: Kafka's own (`org.apache.kafka.tools.ConsumerPerformance`, the Java
//!   client with its defaults), whose report gives the time from the group join to the last message.
//!
//! The last two are the outside anchors: consumers nobody here wrote. `bash ci/setup.sh` installs both
//! (kcat from apt, the tools' jars from Maven Central).
//!
//! All three use `enable.auto.commit=true`, `enable.auto.offset.store=false`,
//! `auto.offset.reset=earliest`, and otherwise their own defaults (`ChannelConsumer` changes two of
//! librdkafka's: `fetch.wait.max.ms` and `fetch.queue.backoff.ms`); `BENCH_CONSUMER_CONFIG` gives them
//! all the same settings on top, to compare the code rather than the configuration. The clock runs from
//! the first message to the last, so the group join and the close are not in the figures; the messages
//! of the first delivery (one batch for `ChannelConsumer`, one message for the others) arrived at time
//! zero, so each drain's time is scaled up by `total / (total - first delivery)`, a correction under 1%
//! at the default size.
//!
//! Criterion reports messages/s and bytes/s of each; the end of the run prints the medians and the
//! ratios the issue sets targets for, the same ratios from rounds of back-to-back drains (steadier on a
//! machine whose speed shifts between benchmarks), and then a memory check of `ChannelConsumer`'s buffer
//! with a slow reader.

mod common;

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Tally, env_number, must, ratio};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use harness::{Backend, Stack, StackOptions};
use loadtest::memory::{self, Process};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use service::kafka::{ChannelConsumer, Deserializer, Ignore, RawBytes, SharedBytes};
use tokio_stream::StreamExt;

const MESSAGE_BYTES: usize = 100;
/// The partition counts, unless `BENCH_PARTITIONS` (e.g. `12` or `3,12`) names some of them.
const PARTITIONS: [i32; 3] = [1, 3, 12];
/// `consume_size` and the `chunks_timeout` batch size, unless `BENCH_CONSUME_SIZE` says otherwise.
const CONSUME_SIZE: u64 = 1000;
/// `chunks_timeout`'s wait for a batch to fill.
const BATCH_WAIT: Duration = Duration::from_millis(10);
/// A drain that takes longer has lost messages: the benchmark stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the slow reader of the memory check reads.
const SLOW_READ: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Channel,
    Base,
    Stream,
    /// kcat, librdkafka's own command-line consumer (C), in a group.
    Kcat,
    /// Kafka's own `kafka-consumer-perf-test` (the Java client).
    PerfTest,
}

impl Reader {
    /// Every reader, in the order the tables list them.
    const ALL: [Reader; 5] = [
        Self::Channel,
        Self::Base,
        Self::Stream,
        Self::Kcat,
        Self::PerfTest,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Channel => "ChannelConsumer",
            Self::Base => "BaseConsumer",
            Self::Stream => "StreamConsumer",
            Self::Kcat => "kcat",
            Self::PerfTest => "kafka-consumer-perf-test",
        }
    }
}

fn main() {
    if !common::benchmarking() {
        println!("channel_consumer: runs under `cargo bench` only");
        return;
    }
    let messages = env_number("BENCH_MESSAGES", 200_000);
    let consume_size = env_number("BENCH_CONSUME_SIZE", CONSUME_SIZE) as usize;
    let runtime = common::runtime();
    let stack = runtime.block_on(async {
        let options = StackOptions {
            backend: Some(Backend::Local),
            kafka_nodes: 1,
            topics: vec![],
            ..StackOptions::default()
        };
        must("starting the local stack", Stack::start(options).await)
    });
    let brokers = stack.kafka_brokers().to_owned();
    for partitions in partition_counts() {
        let topic = topic_name(partitions);
        runtime.block_on(async { must("creating a topic", stack.create_topic(&topic, partitions).await) });
        let started = Instant::now();
        produce(&brokers, &topic, partitions, messages);
        println!(
            "channel_consumer: {topic}: {messages} messages of {MESSAGE_BYTES} bytes produced in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    let tally = Tally::default();
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut group = criterion.benchmark_group("drain");
    // One drain is one iteration, many seconds long: flat sampling, the fewest iterations criterion
    // accepts (ten, plus one to warm up).
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::ElementsAndBytes {
        elements: messages,
        bytes: messages * MESSAGE_BYTES as u64,
    });
    for partitions in partition_counts() {
        let topic = topic_name(partitions);
        for reader in Reader::ALL {
            let id = BenchmarkId::new(reader.name(), partitions);
            let key = format!("{}/{partitions}", reader.name());
            group.bench_function(id, |b| {
                b.iter_custom(|iterations| {
                    (0..iterations)
                        .map(|_| {
                            let elapsed = drain(&runtime, reader, &brokers, &topic, messages, consume_size);
                            tally.record(&key, messages, elapsed);
                            elapsed
                        })
                        .sum()
                })
            });
        }
    }
    group.finish();
    print_summary(&tally, messages);
    paired_rounds(&runtime, &brokers, messages, consume_size);
    runtime.block_on(slow_reader_memory(
        &brokers,
        &topic_name(12),
        messages,
        consume_size,
    ));
    criterion.final_summary();
}

/// `BENCH_PARTITIONS`, or all of [`PARTITIONS`].
fn partition_counts() -> Vec<i32> {
    let Ok(text) = std::env::var("BENCH_PARTITIONS") else {
        return PARTITIONS.to_vec();
    };
    text.split(',')
        .map(|count| match count.trim().parse() {
            Ok(count) if PARTITIONS.contains(&count) => count,
            _ => panic!("BENCH_PARTITIONS={text:?}: expected some of {PARTITIONS:?}, comma-separated"),
        })
        .collect()
}

/// What `ChannelConsumer` hands out as the value: `Bytes` (its default deserializer, which copies
/// values into shared chunks), or with `BENCH_CHANNEL_VALUE=vec` a `Vec<u8>` a message.
fn channel_value() -> ChannelValue {
    match std::env::var("BENCH_CHANNEL_VALUE").as_deref() {
        Err(_) | Ok("bytes") => ChannelValue::Bytes,
        Ok("vec") => ChannelValue::Vec,
        Ok(other) => panic!("BENCH_CHANNEL_VALUE={other:?}: expected bytes or vec"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelValue {
    Bytes,
    Vec,
}

fn topic_name(partitions: i32) -> String {
    format!("bench-{partitions}p")
}

/// A consumer group nobody used before.
fn new_group(reader: &str) -> String {
    static GROUPS: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{reader}-{}-{}",
        std::process::id(),
        GROUPS.fetch_add(1, Ordering::Relaxed)
    )
}

/// A consumer configuration of a group nobody used before.
fn consumer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", new_group("rdkafka"))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("log_level", "3");
    for (key, value) in common_consumer_settings() {
        config.set(key, value);
    }
    config
}

/// librdkafka settings given to all three consumers alike: `BENCH_CONSUMER_CONFIG`, as
/// `key=value,key=value` (for instance `fetch.queue.backoff.ms=10`). Without it each consumer runs with
/// its own defaults: librdkafka's for the rdkafka loops, `ChannelConsumer`'s for it.
fn common_consumer_settings() -> Vec<(String, String)> {
    let Ok(text) = std::env::var("BENCH_CONSUMER_CONFIG") else {
        return Vec::new();
    };
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => (key.trim().to_owned(), value.trim().to_owned()),
            _ => panic!("BENCH_CONSUMER_CONFIG={text:?}: expected key=value,key=value, found {entry:?}"),
        })
        .collect()
}

/// Produces `count` messages round-robin over the partitions and checks that the broker has them.
fn produce(brokers: &str, topic: &str, partitions: i32, count: u64) {
    let producer: BaseProducer = must(
        "producer",
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("acks", "1")
            .create(),
    );
    let mut payload = [b'x'; MESSAGE_BYTES];
    for index in 0..count {
        payload[..8].copy_from_slice(&index.to_be_bytes());
        let partition = (index % partitions as u64) as i32;
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(&payload[..])
            .partition(partition);
        // A full queue is back-pressure: serve deliveries until there is room again.
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, returned)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(50));
                    record = returned;
                }
                Err((error, _)) => panic!("producing to {topic}: {error}"),
            }
        }
    }
    must("flushing the producer", producer.flush(Duration::from_secs(120)));
    let checker: BaseConsumer = must("watermark client", consumer_config(brokers).create());
    let stored: i64 = (0..partitions)
        .map(|partition| {
            let (low, high) = must(
                "fetching watermarks",
                checker.fetch_watermarks(topic, partition, Duration::from_secs(10)),
            );
            high - low
        })
        .sum();
    assert_eq!(
        stored, count as i64,
        "{topic} holds {stored} messages, not {count}"
    );
}

/// Drains `topic` once with `reader`; the time from its first message to its last.
fn drain(
    runtime: &tokio::runtime::Runtime,
    reader: Reader,
    brokers: &str,
    topic: &str,
    messages: u64,
    consume_size: usize,
) -> Duration {
    match reader {
        Reader::Channel => match channel_value() {
            ChannelValue::Bytes => runtime.block_on(drain_channel(
                brokers,
                topic,
                messages,
                consume_size,
                SharedBytes::default(),
            )),
            ChannelValue::Vec => {
                runtime.block_on(drain_channel(brokers, topic, messages, consume_size, RawBytes))
            }
        },
        Reader::Base => drain_base(brokers, topic, messages),
        Reader::Stream => runtime.block_on(drain_stream(brokers, topic, messages)),
        Reader::Kcat => drain_kcat(brokers, topic, messages),
        Reader::PerfTest => drain_perf_test(brokers, topic, messages),
    }
}

/// The elapsed time of a drain whose first `first` of `total` messages arrived at its start.
fn scaled(elapsed: Duration, total: u64, first: u64) -> Duration {
    elapsed.mul_f64(total as f64 / (total - first.min(total - 1)) as f64)
}

async fn drain_channel<V: AsRef<[u8]> + Send + 'static>(
    brokers: &str,
    topic: &str,
    total: u64,
    consume_size: usize,
    values: impl Deserializer<V> + 'static,
) -> Duration {
    let consumer = must(
        "ChannelConsumer",
        ChannelConsumer::<(), V>::builder(consumer_config(brokers), topic)
            .consume_size(consume_size)
            .key_deserializer(Ignore)
            .value_deserializer(values)
            .build(),
    );
    let control = consumer.control();
    let mut batches = pin!(consumer.chunks_timeout(consume_size, BATCH_WAIT));
    let (mut seen, mut first) = (0u64, None);
    while seen < total {
        let batch = match tokio::time::timeout(DRAIN_TIMEOUT, batches.next()).await {
            Ok(Some(batch)) => batch,
            Ok(None) => panic!("ChannelConsumer ended after {seen} of {total} messages"),
            Err(_) => panic!("ChannelConsumer: {seen} of {total} messages after {DRAIN_TIMEOUT:?}"),
        };
        let size = batch.len() as u64;
        for item in batch {
            let message = must("ChannelConsumer item", item);
            black_box(message.value().as_ref().len());
            message.handle();
        }
        if first.is_none() {
            first = Some((Instant::now(), size));
        }
        seen += size;
    }
    let Some((started, first_batch)) = first else {
        return Duration::ZERO;
    };
    let elapsed = scaled(started.elapsed(), total, first_batch);
    // Commits and leaves the group; not part of the figure.
    if let Err(error) = control.close().await {
        eprintln!("ChannelConsumer close: {error}");
    }
    elapsed
}

fn drain_base(brokers: &str, topic: &str, total: u64) -> Duration {
    let consumer: BaseConsumer = must("BaseConsumer", consumer_config(brokers).create());
    must("subscribe", consumer.subscribe(&[topic]));
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let (mut seen, mut started) = (0u64, None);
    while seen < total {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                started.get_or_insert_with(Instant::now);
                black_box(message.payload().map_or(0, <[u8]>::len));
                must("store_offset", consumer.store_offset_from_message(&message));
                seen += 1;
            }
            Some(Err(error)) => eprintln!("BaseConsumer: {error}"),
            None if Instant::now() > deadline => panic!("BaseConsumer: {seen} of {total} messages"),
            None => {}
        }
    }
    started.map_or(Duration::ZERO, |started| scaled(started.elapsed(), total, 1))
}

async fn drain_stream(brokers: &str, topic: &str, total: u64) -> Duration {
    let consumer: StreamConsumer = must("StreamConsumer", consumer_config(brokers).create());
    must("subscribe", consumer.subscribe(&[topic]));
    let (mut seen, mut started) = (0u64, None);
    while seen < total {
        match tokio::time::timeout(DRAIN_TIMEOUT, consumer.recv()).await {
            Ok(Ok(message)) => {
                started.get_or_insert_with(Instant::now);
                black_box(message.payload().map_or(0, <[u8]>::len));
                must("store_offset", consumer.store_offset_from_message(&message));
                seen += 1;
            }
            Ok(Err(error)) => eprintln!("StreamConsumer: {error}"),
            Err(_) => panic!("StreamConsumer: {seen} of {total} messages after {DRAIN_TIMEOUT:?}"),
        }
    }
    started.map_or(Duration::ZERO, |started| scaled(started.elapsed(), total, 1))
}

/// kcat in a group of its own (`-G`), reading from the start and exiting at the end of every partition
/// (`-e`), with the same librdkafka settings as the others (`-X`), printing each message's offset; the
/// time from the first line to the last, read as it prints them.
fn drain_kcat(brokers: &str, topic: &str, total: u64) -> Duration {
    let mut command = Command::new(must("kcat", harness::stack::kcat()));
    command.args(["-C", "-q", "-e", "-b", brokers, "-f", "%o\n"]);
    for (key, value) in kcat_settings() {
        command.arg("-X").arg(format!("{key}={value}"));
    }
    command.args(["-G", &new_group("kcat"), topic]);
    let mut child = must(
        "starting kcat",
        command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn(),
    );
    let stdout = child.stdout.take().expect("kcat's stdout is piped");
    // The clock stops at the last message, not when kcat exits: it exits after leaving the group.
    let (mut seen, mut started, mut elapsed) = (0u64, None, Duration::ZERO);
    for line in BufReader::new(stdout).lines() {
        must("reading kcat's output", line);
        let started = *started.get_or_insert_with(Instant::now);
        seen += 1;
        if seen == total {
            elapsed = started.elapsed();
        }
    }
    let status = must("waiting for kcat", child.wait());
    assert!(status.success(), "kcat failed: {status}");
    assert_eq!(seen, total, "kcat read {seen} of {total} messages");
    scaled(elapsed, total, 1)
}

/// What kcat is given with `-X`: the consumers' common settings. Debian's kcat runs on Debian's
/// librdkafka (2.0), older than rdkafka's (2.12): it has no `fetch.queue.backoff.ms`, and backs off
/// a full prefetch queue for `fetch.error.backoff.ms` instead, so that is what it gets.
fn kcat_settings() -> Vec<(String, String)> {
    let mut settings = vec![
        ("auto.offset.reset".to_owned(), "earliest".to_owned()),
        ("log_level".to_owned(), "3".to_owned()),
    ];
    settings.extend(
        common_consumer_settings()
            .into_iter()
            .map(|(key, value)| match key.as_str() {
                "fetch.queue.backoff.ms" => ("fetch.error.backoff.ms".to_owned(), value),
                _ => (key, value),
            }),
    );
    settings
}

/// Kafka's `kafka-consumer-perf-test` (`org.apache.kafka.tools.ConsumerPerformance`, from the tools jars
/// `bash ci/setup.sh` downloads) in a group of its own: its own measure of the time from the group
/// join to the last message ("fetch.time.ms"), with the Java client's defaults.
fn drain_perf_test(brokers: &str, topic: &str, total: u64) -> Duration {
    let tools = must("Kafka's tools", harness::stack::kafka_tools_dir());
    let output = must(
        "running kafka-consumer-perf-test",
        Command::new(must("java", harness::stack::java()))
            .arg("-cp")
            .arg(tools.join("*"))
            .arg("org.apache.kafka.tools.ConsumerPerformance")
            .args([
                "--bootstrap-server",
                brokers,
                "--topic",
                topic,
                "--group",
                &new_group("perf-test"),
            ])
            .args(["--messages", &total.to_string(), "--timeout", "300000"])
            .stderr(Stdio::inherit())
            .output(),
    );
    assert!(
        output.status.success(),
        "kafka-consumer-perf-test failed: {}",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = PerfTestReport::parse(&stdout)
        .unwrap_or_else(|| panic!("kafka-consumer-perf-test printed no report: {stdout}"));
    assert_eq!(
        report.messages, total,
        "kafka-consumer-perf-test read {} of {total} messages",
        report.messages
    );
    report.fetch_time
}

/// The figures of `kafka-consumer-perf-test`'s report this benchmark uses.
#[derive(Debug, PartialEq)]
struct PerfTestReport {
    /// `data.consumed.in.nMsg`.
    messages: u64,
    /// `fetch.time.ms`: from the end of the group join to the last message.
    fetch_time: Duration,
}

impl PerfTestReport {
    /// The report is a header line of comma-separated names and a line of values.
    fn parse(stdout: &str) -> Option<Self> {
        let mut lines = stdout.lines().filter(|line| line.contains(','));
        let names: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
        let values: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
        let value = |name: &str| {
            let index = names.iter().position(|n| *n == name)?;
            values.get(index)?.parse::<f64>().ok()
        };
        Some(Self {
            messages: value("data.consumed.in.nMsg")? as u64,
            fetch_time: Duration::from_secs_f64(value("fetch.time.ms")? / 1000.0),
        })
    }
}

fn print_summary(tally: &Tally, messages: u64) {
    println!("\nchannel_consumer: median of the measured drains of {messages} messages of {MESSAGE_BYTES} B");
    print!("| partitions | consumer | messages/s | MB/s | drains |");
    for anchor in &Reader::ALL[1..] {
        print!(" vs {} |", anchor.name());
    }
    println!("\n|---|---|---|---|---|{}", "---|".repeat(Reader::ALL.len() - 1));
    for partitions in partition_counts() {
        let rate = |reader: Reader| tally.median(&format!("{}/{partitions}", reader.name()));
        for reader in Reader::ALL {
            let Some((median, drains)) = rate(reader) else {
                continue;
            };
            print!(
                "| {partitions} | {} | {median:.0} | {:.1} | {drains} |",
                reader.name(),
                median * MESSAGE_BYTES as f64 / 1e6
            );
            for anchor in &Reader::ALL[1..] {
                print!(" {} |", ratio(Some(median), rate(*anchor).map(|r| r.0)));
            }
            println!();
        }
    }
}

/// The ratios again, from drains taken in rounds: each round drains a topic with every reader one right
/// after the other, so that the ratios of a round compare drains seconds apart, not the minutes between
/// two criterion benchmarks, over which this machine's speed shifts. The order rotates from round to
/// round so that no reader always comes first. `BENCH_PAIRED_ROUNDS` rounds per topic (default 3);
/// `BENCH_ROUND_READERS` (e.g. `BaseConsumer`, comma-separated) limits the anchors, for profiling.
fn paired_rounds(runtime: &tokio::runtime::Runtime, brokers: &str, messages: u64, consume_size: usize) {
    let rounds = env_number("BENCH_PAIRED_ROUNDS", 3) as usize;
    let readers = round_readers();
    println!(
        "\nchannel_consumer: {rounds} rounds of every reader back to back, {messages} messages each; \
         ChannelConsumer's rate, and its rate over each other's: median (min-max)"
    );
    print!("| partitions | ChannelConsumer, messages/s |");
    for anchor in &readers[1..] {
        print!(" ChannelConsumer / {} |", anchor.name());
    }
    println!("\n|---|---|{}", "---|".repeat(readers.len() - 1));
    for partitions in partition_counts() {
        let topic = topic_name(partitions);
        let mut ratios = vec![Vec::new(); readers.len()];
        for round in 0..rounds {
            let mut rates = vec![0.0; readers.len()];
            for turn in 0..readers.len() {
                let index = (round + turn) % readers.len();
                let elapsed = drain(runtime, readers[index], brokers, &topic, messages, consume_size);
                rates[index] = messages as f64 / elapsed.as_secs_f64().max(1e-9);
            }
            ratios[0].push(rates[0]);
            for (index, rate) in rates.iter().enumerate().skip(1) {
                ratios[index].push(rates[0] / rate);
            }
        }
        ratios[0].sort_by(f64::total_cmp);
        print!("| {partitions} | {:.0} |", ratios[0][ratios[0].len() / 2]);
        for ratios in ratios.iter_mut().skip(1) {
            print!(" {} |", spread(ratios));
        }
        println!();
    }
}

/// `ChannelConsumer` first, then the anchors `BENCH_ROUND_READERS` names, or all of them.
fn round_readers() -> Vec<Reader> {
    let Ok(text) = std::env::var("BENCH_ROUND_READERS") else {
        return Reader::ALL.to_vec();
    };
    let mut readers = vec![Reader::Channel];
    for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        match Reader::ALL[1..].iter().find(|reader| reader.name() == name) {
            Some(reader) => readers.push(*reader),
            None => panic!("BENCH_ROUND_READERS={text:?}: {name} is none of the anchors"),
        }
    }
    readers
}

/// "median (min-max)" of ratios.
fn spread(ratios: &mut [f64]) -> String {
    ratios.sort_by(f64::total_cmp);
    match (ratios.first(), ratios.get(ratios.len() / 2), ratios.last()) {
        (Some(min), Some(median), Some(max)) => format!("{median:.2}x ({min:.2}-{max:.2})"),
        _ => "n/a".into(),
    }
}

/// `ChannelConsumer` with a reader far slower than the poll thread: were its buffer unbounded, the poll
/// thread would pull the topic into memory as fast as the broker serves it. Resident memory is sampled
/// while reading, twice: first with librdkafka's own prefetch queue cut down to 1 MiB and 1000
/// messages a partition, so that what remains is `ChannelConsumer`'s buffer; then with librdkafka's
/// defaults (up to 64 MiB of prefetched messages), as the service runs it. (In that order because
/// memory freed by the first is reused by the second, not returned to the system.)
async fn slow_reader_memory(brokers: &str, topic: &str, messages: u64, consume_size: usize) {
    let small_prefetch = [
        ("queued.max.messages.kbytes", "1024"),
        ("queued.min.messages", "1000"),
    ];
    for (label, settings) in [
        ("librdkafka prefetch cut to 1 MiB", &small_prefetch[..]),
        ("librdkafka defaults", &[][..]),
    ] {
        let mut config = consumer_config(brokers);
        for (key, value) in settings {
            config.set(*key, *value);
        }
        slow_read(config, topic, messages, consume_size, label).await;
    }
}

async fn slow_read(config: ClientConfig, topic: &str, messages: u64, consume_size: usize, label: &str) {
    let before = memory::resident_kib(Process::This).ok();
    let sampler = must(
        "memory sampler",
        memory::Sampler::start(Process::This, Duration::from_millis(100)),
    );
    let consumer = must(
        "ChannelConsumer",
        ChannelConsumer::<(), Vec<u8>>::builder(config, topic)
            .consume_size(consume_size)
            .key_deserializer(Ignore)
            .value_deserializer(RawBytes)
            .build(),
    );
    let control = consumer.control();
    let mut stream = pin!(consumer);
    let started = Instant::now();
    let mut read = 0u64;
    while started.elapsed() < SLOW_READ && read < messages {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(item)) => {
                must("ChannelConsumer item", item).handle();
                read += 1;
                // A reader far behind the poll thread: a pause after every 20 messages.
                if read.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            _ => break,
        }
    }
    let report = sampler.stop(Process::This).await;
    let _ = control.close().await;
    let rate = read as f64 / started.elapsed().as_secs_f64();
    println!(
        "\nchannel_consumer: slow reader on {topic}, {label}: {read} of {messages} messages in {:.1} s ({rate:.0}/s); \
         resident memory before {:.1} MiB, while reading: first {:.1}, max {:.1}, last {:.1} MiB ({} samples); \
         the topic holds {:.1} MB of payload",
        started.elapsed().as_secs_f64(),
        before.map_or(0.0, |kib| kib as f64 / 1024.0),
        report.first_mib,
        report.max_mib,
        report.last_mib,
        report.samples.len(),
        (messages * MESSAGE_BYTES as u64) as f64 / 1e6,
    );
}
