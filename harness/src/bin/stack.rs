//! `stack up`: PostgreSQL, Redis and Kafka for people, until Ctrl-C. (`stack lag`: a consumer group's lag,
//! for scripts.)
//!
//! Prints one `export NAME=value` line per endpoint, then `ready`, so a shell can
//! `eval "$(… | sed '/^ready$/q')"` or a person can copy the lines; then waits for Ctrl-C or SIGTERM
//! and stops everything.

use anyhow::Context;
use clap::{Parser, Subcommand};
use harness::{RedisMode, Stack, StackOptions, TopicSpec};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(about = "Runs PostgreSQL, Redis and Kafka for the orders cache until Ctrl-C")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the stack, print its endpoints as `export` lines, then `ready`, and run until Ctrl-C / SIGTERM.
    Up {
        /// Kafka nodes (each a combined broker and controller).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
        kafka_nodes: u16,
        /// Topics to create, as NAME:PARTITIONS.
        #[arg(long = "topic", default_value = "order-events:3", value_parser = parse_topic)]
        topics: Vec<TopicSpec>,
        /// A Redis Cluster (three masters, three replicas) instead of one Redis; `REDIS_URL` then lists
        /// every node, comma-separated, which is what `orders-service` takes for a cluster.
        #[arg(long)]
        redis_cluster: bool,
    },
    /// Print how many messages of a topic a consumer group has not committed yet (0: it read them all).
    Lag {
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        #[arg(long)]
        group: String,
        #[arg(long, default_value = "order-events")]
        topic: String,
    },
}

fn parse_topic(text: &str) -> Result<TopicSpec, String> {
    let (name, partitions) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME:PARTITIONS"))?;
    let partitions: i32 = partitions
        .parse()
        .ok()
        .filter(|p| (1..=1000).contains(p))
        .ok_or_else(|| format!("partitions in {text:?} must be a number from 1 to 1000"))?;
    if name.is_empty() {
        return Err(format!("{text:?} has no topic name"));
    }
    Ok(TopicSpec::new(name, partitions))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (kafka_nodes, topics, redis_cluster) = match Cli::parse().command {
        Command::Up {
            kafka_nodes,
            topics,
            redis_cluster,
        } => (kafka_nodes, topics, redis_cluster),
        Command::Lag {
            brokers,
            group,
            topic,
        } => {
            let lag = tokio::task::spawn_blocking(move || harness::lag::group_lag(&brokers, &group, &topic))
                .await??;
            println!("{lag}");
            return Ok(());
        }
    };
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let options = StackOptions {
        backend: None,
        kafka_nodes: kafka_nodes.into(),
        topics,
        redis: if redis_cluster {
            RedisMode::Cluster
        } else {
            RedisMode::Single
        },
    };
    let started = std::time::Instant::now();
    let stack = tokio::select! {
        stack = Stack::start(options) => stack.context("the stack did not start")?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    };
    print!("{}", stack.endpoints().exports());
    if let Some(dir) = stack.directory() {
        // For scripts that keep the servers' logs of a failed run (ci/test.sh).
        println!("# directory {}", dir.display());
    }
    println!("ready");
    if let Some(dir) = stack.directory() {
        eprintln!(
            "stack: {} backend ready in {:.1} s; data and logs in {}",
            stack.backend().name(),
            started.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("stack: stopping");
    drop(stack);
    Ok(())
}
