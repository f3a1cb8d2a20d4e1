//! `consistency`: the soak command. Runs traffic and a rotation of faults against the real service for a
//! given time, then checks every invariant and writes a report (text, JSON, and an SVG chart of
//! staleness over time with the fault windows shaded).
//!
//! ```sh
//! cargo run -p harness --release --bin consistency -- --duration 10m
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use harness::consistency::report;
use harness::consistency::scenario::{Assignment, Fault, FaultKind, Step};
use harness::consistency::workload::Mix;
use harness::consistency::{ClusterConfig, check, run};
use harness::node::Variant;
use harness::{Backend, RedisMode, Stack, StackOptions};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Soak test: traffic and faults against the real service, then a consistency report")]
struct Cli {
    /// How long to run traffic (then the run settles and is checked), e.g. 90s, 10m, 1h.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Client operations per second, all clients together.
    #[arg(long, default_value_t = 300.0, value_parser = positive_rate)]
    rate: f64,

    /// Orders in progress at once: a finished order is replaced by a new one, so most status changes
    /// commit a version, and the sampler watches a bounded set of keys; 0: every order stays a target
    /// (finished orders are asked for illegal changes, as in the tests).
    #[arg(long, default_value_t = 200)]
    working_set: usize,

    /// Concurrent clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=64))]
    clients: u8,

    /// Faults to rotate through, comma-separated (see `--faults list`), `all`, or `none`.
    #[arg(long, default_value = "all")]
    faults: String,

    /// Time between two faults.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    fault_every: Duration,

    /// Partitions of the order-events topic.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=256))]
    partitions: i32,

    /// Kafka nodes; with 3, `kafka-kill` loses one broker of a cluster instead of the whole of Kafka.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    kafka_nodes: u8,

    /// A Redis Cluster (three masters, three replicas) instead of one Redis. The faults of a single
    /// Redis process (redis-restart, redis-evict, redis-pause) then give way to a master's failover
    /// (redis-master-kill, redis-master-pause).
    #[arg(long)]
    redis_cluster: bool,

    /// Cache-updater instances at the start (faults add and remove them, between 1 and 3).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    updaters: u8,

    /// Partition assignment of the updater group.
    #[arg(long, value_enum, default_value_t = Assignment::CooperativeSticky)]
    assignment: Assignment,

    /// Seed of the workload and the fault order.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Service variant: correct, slow-fill (correct, slow fills), or a broken one to see it caught.
    #[arg(long, value_enum, default_value_t = Variant::Correct)]
    variant: Variant,

    /// Directory for report.txt, report.json and staleness.svg.
    #[arg(long, default_value = "reports/consistency")]
    out: PathBuf,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 100_000.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate between 0 and 100000 operations per second"
        )),
    }
}

/// The fault rotation named by `--faults`, among those that run where Redis is `redis`.
fn parse_faults(text: &str, redis: RedisMode) -> anyhow::Result<Vec<Fault>> {
    let all = [
        Fault::AddUpdater,
        Fault::KillUpdater,
        Fault::RemoveUpdater,
        Fault::KillApi,
        Fault::AddUpdater,
        Fault::KafkaDown { kill_api: true },
        Fault::RedisRestart,
        Fault::RemoveUpdater,
        Fault::RedisFlush,
        Fault::KafkaKill,
        Fault::RedisEvict,
        Fault::RedisPause {
            restart_updater: true,
        },
        Fault::PostgresRestart,
        Fault::RedisRefusesWrites,
        Fault::KafkaDown { kill_api: false },
        Fault::RedisPause {
            restart_updater: false,
        },
        Fault::RedisMasterKill,
        Fault::RedisMasterPause,
    ];
    let all: Vec<Fault> = all.into_iter().filter(|f| f.runs_on(redis)).collect();
    match text {
        "all" => Ok(all),
        "none" => Ok(Vec::new()),
        list => list
            .split(',')
            .map(|name| {
                let name = name.trim();
                all.iter()
                    .copied()
                    .find(|f| f.kind().name() == name)
                    .with_context(|| {
                        let known: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
                        let here: Vec<&str> = all.iter().map(|f| f.kind().name()).collect();
                        format!(
                            "unknown fault {name:?}, or one that does not run on a {redis:?} Redis; \
                             known: {}; here: {}, or all, or none",
                            known.join(", "),
                            here.join(", ")
                        )
                    })
            })
            .collect(),
    }
}

/// The `orders-node` binary beside this one, built first if `cargo run` did not.
fn node_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this binary")?;
    let node = me.with_file_name("orders-node");
    if node.is_file() {
        return Ok(node);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = me.parent().is_some_and(|dir| dir.ends_with("release"));
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "-q", "-p", "harness", "--bin", "orders-node"]);
    if release {
        build.arg("--release");
    }
    if !build.status().context("running cargo build")?.success() || !node.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p harness --bins`",
            node.display()
        );
    }
    Ok(node)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let redis = if cli.redis_cluster {
        RedisMode::Cluster
    } else {
        RedisMode::Single
    };
    let faults = parse_faults(&cli.faults, redis)?;
    let node_binary = node_binary()?;
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    let stack = runtime
        .block_on(Stack::start(StackOptions {
            backend: Some(Backend::Local),
            kafka_nodes: cli.kafka_nodes.into(),
            topics: vec![],
            redis,
        }))
        .context("starting the local stack")?;
    let config = ClusterConfig {
        node_binary,
        variant: cli.variant,
        assignment: cli.assignment,
        partitions: cli.partitions,
        log_dir: cli.out.join("logs"),
        pace: Some(cli.rate),
        mix: match cli.working_set {
            0 => Mix::Everything,
            size => Mix::WorkingSet(size),
        },
        initial_updaters: cli.updaters.into(),
    };

    let progress = ProgressBar::new(cli.duration.as_secs());
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));

    // Steps are generated as they are taken, until the deadline: traffic, and a fault every
    // `fault_every`, rotating through the chosen kinds.
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let traffic_per_step = ((cli.rate * 5.0) as u16).max(1);
    let mut next_fault = cli.fault_every;
    let mut fault_index = 0;
    let (clients, rate, duration, fault_every) = (cli.clients, cli.rate, cli.duration, cli.fault_every);
    let mut first = true;
    let steps = std::iter::from_fn(move || {
        if first {
            first = false;
            return Some(Step::Create { count: 30 });
        }
        let elapsed = started.elapsed();
        if elapsed >= duration {
            return None;
        }
        if !faults.is_empty() && elapsed >= next_fault {
            next_fault = elapsed + fault_every;
            let fault = faults[fault_index % faults.len()];
            fault_index += 1;
            return Some(Step::Fault {
                fault,
                traffic: ((rate * 3.0) as u16).max(1),
                seed: rng.random(),
            });
        }
        if rng.random_bool(0.1) {
            return Some(Step::Create { count: 10 });
        }
        if rng.random_bool(0.05) {
            return Some(Step::Race {
                clients: 3,
                seed: rng.random(),
            });
        }
        Some(Step::Traffic {
            count: traffic_per_step,
            clients,
            seed: rng.random(),
        })
    });

    let bar = progress.clone();
    let outcome = runtime
        .block_on(run(
            &stack,
            config,
            steps,
            &format!("soak{}", std::process::id()),
            |_, step| {
                bar.set_position(started.elapsed().as_secs().min(duration.as_secs()));
                bar.set_message(step.to_string());
            },
        ))
        .context("the run could not be carried out")?;
    progress.finish_with_message("checking");

    let report = check(&outcome);
    let text = report::text(&report);
    print!("{text}");
    std::fs::write(cli.out.join("report.txt"), &text)?;
    std::fs::write(
        cli.out.join("report.json"),
        report::json(&report, &outcome.recorded)?,
    )?;
    std::fs::write(
        cli.out.join("staleness.svg"),
        report::svg(&report.staleness.writes, &outcome.recorded),
    )?;
    println!(
        "reports in {}/ (report.txt, report.json, staleness.svg)",
        cli.out.display()
    );
    drop(stack);
    if !report.shortfalls.is_empty() {
        bail!(
            "the run fell short of its floors: {}",
            report.shortfalls.join("; ")
        );
    }
    if !report.is_consistent() {
        bail!("{} inconsistencies", report.violations.len());
    }
    Ok(())
}
