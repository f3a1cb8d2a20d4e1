//! `loadtest`: goose users driving the orders gRPC API, a probe measuring how stale the cache is
//! meanwhile, resident memory sampled, and goose's reports completed with those figures.
//!
//! The command line is ours (where the service is or whether to start it, the data set, the scenario
//! weights, the probe) together with all of goose's own options (users, run time, reports,
//! thresholds, …), parsed by clap in one go: `--help` lists both, and a nonsense flag is refused before
//! anything starts. goose's configuration is then completed with our defaults (a bounded run, enough
//! users) and handed to `GooseAttack::initialize_with_config`.
//!
//! A run, in order: start the local stack and the service (`--start-service`) or connect to `--host`;
//! create the data set and the probe's orders; warm or flush the cache; start the probe and the memory
//! sampler; let goose run; stop the probe and the sampler; complete the reports; stop the service.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser};
use goose::config::GooseConfiguration;
use goose::prelude::*;
use harness::app::App;
use loadtest::cache_admin::CacheAdmin;
use loadtest::memory::{self, Process};
use loadtest::report::{self, RunFigures};
use loadtest::scenarios::{self, Weights};
use loadtest::seed::{self, CacheMode, Preparation};
use loadtest::staleness::{self, Probe, ProbeSettings};
use loadtest::target::{self, LocalStack};
use loadtest::workload::Workload;

/// Users when neither `--users` nor a test plan says.
const DEFAULT_USERS: usize = 8;
/// Run time when neither `--run-time`, `--iterations` nor a test plan bounds the run.
const DEFAULT_RUN_TIME: &str = "60s";
/// The probe's measurements in flight at most (see `staleness`).
const PROBE_MAX_IN_FLIGHT: usize = 1000;
/// A probe update not served by the cache within this counts as never served.
const PROBE_GIVE_UP: Duration = Duration::from_secs(10);
/// Orders set aside to check that the service is live end to end before the load starts.
const CANARIES: usize = 3;
/// How long to wait for that.
const LIVE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "Load test of the orders gRPC API (goose), with a cache-staleness probe and memory sampling",
    // Without this, the long help would open with the documentation of goose's configuration type.
    long_about = None,
    after_help = "Examples:\n  \
        loadtest --start-service -t 60s --report-file report.html\n  \
        loadtest -H http://127.0.0.1:50051 --redis-url redis://127.0.0.1:6379/ --weights warm-reads=3,cold-reads=1 -u 16 -t 2m\n  \
        loadtest --start-service -t 10m --throttle-requests 500 --probe-rate 50 --report-file soak.json\n\n\
        Runs stop by themselves: after --run-time, --iterations or the --test-plan, or after 60 s."
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(flatten)]
    goose: GooseConfiguration,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Orders service")]
struct Options {
    /// Start PostgreSQL, Redis, Kafka (local processes) and the service (in this process), and load
    /// that instead of --host.
    #[arg(long, conflicts_with_all = ["host", "redis_url", "service_pid", "allow_remote"])]
    start_service: bool,

    /// With --start-service: the cache on a Redis Cluster (three masters, three replicas) instead of
    /// one Redis.
    #[arg(long, requires = "start_service")]
    redis_cluster: bool,

    /// Allow --host to name another machine (by default only loopback addresses are loaded).
    #[arg(long)]
    allow_remote: bool,

    /// Redis of the service under --host, for cold reads and --cache flush.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,

    /// Orders the run creates for itself before the load.
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    orders: u32,

    /// What the cache holds of those orders when the load starts.
    #[arg(long, value_enum, default_value_t = CacheMode::Warm)]
    cache: CacheMode,

    /// Scenario weights: warm-reads, cold-reads, batch-reads, status-updates, creates, mix.
    #[arg(long, value_name = "NAME=W,...", default_value = "mix=1")]
    weights: Weights,

    /// Orders per GetOrders of the batch reads.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    batch_size: u32,

    /// Staleness probe: updates per second, steady (0: no probe).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 200.0, value_parser = probe_rate)]
    probe_rate: f64,

    /// Staleness probe: milliseconds between two reads of one measurement (its resolution).
    #[arg(long, value_name = "MS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    probe_poll_ms: u64,

    /// Staleness probe: orders of its own that it moves along their life cycle.
    #[arg(long, value_name = "N", default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    probe_orders: u32,

    /// Sample the resident memory of this process (the service under --host); with --start-service,
    /// this process is sampled.
    #[arg(long, value_name = "PID")]
    service_pid: Option<u32>,

    /// Seconds between two memory samples.
    #[arg(long, value_name = "SECONDS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
    memory_every: u64,
}

fn probe_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=5000.0).contains(&rate) => Ok(rate),
        _ => Err("a number of updates per second from 0 to 5000".into()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { options, mut goose } = Cli::parse();
    init_tracing()?;
    if goose.version || goose.list || goose.scenarios_list {
        // goose prints and exits; the scenarios need a workload only to exist.
        goose.host.get_or_insert_with(|| target::DEFAULT_ENDPOINT.into());
        let workload = Arc::new(Workload::new(&[], 0, None, 1));
        attack(goose, &options.weights, &workload)?.execute().await?;
        return Ok(());
    }
    check(&options, &goose)?;
    complete_goose_defaults(&mut goose);

    let local = match options.start_service {
        true => Some(start_local(options.redis_cluster).await?),
        false => None,
    };
    let endpoint = match &local {
        Some((_, service)) => service.endpoint(),
        None => goose
            .host
            .clone()
            .unwrap_or_else(|| target::DEFAULT_ENDPOINT.into()),
    };
    goose.host = Some(endpoint.clone());
    let redis_url = match &local {
        Some((stack, _)) => Some(stack.settings().redis_url.clone()),
        None => options.redis_url.clone(),
    };
    let admin = match &redis_url {
        Some(url) => Some(
            CacheAdmin::connect(url)
                .await
                .with_context(|| format!("Redis at {url}"))?,
        ),
        None => None,
    };

    let result = run(&options, goose, &endpoint, admin, local.is_some()).await;
    if let Some((_stack, service)) = local {
        eprintln!("loadtest: stopping the service and the local stack");
        service.stop().await.context("stopping the service")?;
    }
    result
}

/// Everything between a reachable service and its stop.
async fn run(
    options: &Options,
    goose: GooseConfiguration,
    endpoint: &str,
    admin: Option<CacheAdmin>,
    in_process: bool,
) -> anyhow::Result<()> {
    let client = target::connect(endpoint).await?;
    let run_id = format!(
        "{}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        std::process::id()
    );

    let orders = options.orders as usize;
    eprintln!(
        "loadtest: creating {orders} orders and {} for the probe",
        options.probe_orders
    );
    let started = Instant::now();
    let seeded = seed::create_orders(&client, orders, &run_id).await?;
    let probe_count = options.probe_orders as usize + CANARIES;
    let mut probe_orders = seed::create_orders(&client, probe_count, &format!("{run_id}-probe")).await?;
    let canaries: Vec<i64> = probe_orders.drain(..CANARIES).collect();
    let seed_seconds = started.elapsed().as_secs_f64();
    // The probe's orders must be cached before their first update (see `staleness`).
    seed::prepare_cache(&client, None, &probe_orders, CacheMode::Warm).await?;
    seed::prepare_cache(&client, None, &canaries, CacheMode::Warm).await?;
    let probe_settings = ProbeSettings {
        rate: options.probe_rate,
        poll_every: Duration::from_millis(options.probe_poll_ms),
        give_up_after: PROBE_GIVE_UP,
        max_in_flight: PROBE_MAX_IN_FLIGHT,
    };
    eprintln!("loadtest: waiting until updates reach the cache");
    let live_after = staleness::wait_until_live(&client, &canaries, probe_settings, LIVE_DEADLINE).await;
    if live_after.is_none() {
        eprintln!("loadtest: updates still do not reach the cache quickly; measuring anyway");
    }
    eprintln!("loadtest: cache {:?}", options.cache);
    let (cache_time, cached_at_start) =
        seed::prepare_cache(&client, admin.as_ref(), &seeded, options.cache).await?;

    let users = goose.users;
    let cold = if options.weights.reads_cold() && admin.is_some() {
        (orders / 10)
            .max(2 * users.unwrap_or(DEFAULT_USERS))
            .min(orders / 2)
    } else {
        0
    };
    let workload = Arc::new(Workload::new(&seeded, cold, admin, options.batch_size as usize));
    let reports = goose.report_file.clone();
    let attack = attack(goose, &options.weights, &workload)?;

    let process = match (in_process, options.service_pid) {
        (true, _) => Some(Process::This),
        (false, pid) => pid.map(Process::Pid),
    };
    let every = Duration::from_secs(options.memory_every);
    let sampler = process
        .map(|process| memory::Sampler::start(process, every).map(|sampler| (process, sampler)))
        .transpose()?;
    let probe =
        (options.probe_rate > 0.0).then(|| Probe::start(client.clone(), &probe_orders, probe_settings));

    let outcome = attack.execute().await;

    // The probe lets its measurements in flight finish; the sampler keeps what it saw.
    let staleness = match probe {
        Some(probe) => Some(probe.stop().await),
        None => None,
    };
    let memory = match sampler {
        Some((process, sampler)) => Some(sampler.stop(process).await),
        None => None,
    };
    let figures = RunFigures {
        target: endpoint.to_owned(),
        service_in_process: in_process,
        weights: options.weights.to_string(),
        users,
        preparation: Preparation {
            orders,
            seed_seconds,
            cache_mode: options.cache,
            cache_seconds: cache_time.as_secs_f64(),
            cached_at_start,
            live_after_seconds: live_after.map(|d| d.as_secs_f64()),
        },
        reads: workload.sources.snapshot(),
        staleness,
        memory,
    };
    println!("\n{}", report::markdown(&figures));
    // goose writes its reports even when the run fails (a threshold, say): complete what it wrote.
    let written: Vec<String> = reports
        .into_iter()
        .filter(|path| std::path::Path::new(path).exists())
        .collect();
    report::complete_reports(&written, &figures)?;
    for path in &written {
        eprintln!("loadtest: report {path}");
    }
    outcome?;
    Ok(())
}

/// Refuses what would make no sense, before anything starts.
fn check(options: &Options, goose: &GooseConfiguration) -> anyhow::Result<()> {
    for path in &goose.report_file {
        report::format_of(path)?;
    }
    if goose.render_report.is_some() {
        bail!("--render-report renders an existing report without a load test: use goose's own tools for it");
    }
    if !options.start_service {
        let host = goose.host.as_deref().unwrap_or(target::DEFAULT_ENDPOINT);
        if !target::is_loopback(host)? && !options.allow_remote {
            bail!("--host {host} is not this machine; load another one only on purpose, with --allow-remote");
        }
        let explicit_cold = options
            .weights
            .iter()
            .any(|(kind, _)| kind == scenarios::Kind::ColdReads);
        if options.redis_url.is_none() && explicit_cold {
            bail!("cold reads evict orders from the cache first: give the service's Redis with --redis-url");
        }
        if options.redis_url.is_none() && options.cache == CacheMode::Flush {
            bail!(
                "--cache flush deletes the data set from the cache: give the service's Redis with --redis-url"
            );
        }
    }
    Ok(())
}

/// Our defaults where goose's command line says nothing: a bounded run, enough users, all started
/// within a second. A test plan sets all of that itself, so it is left alone.
fn complete_goose_defaults(goose: &mut GooseConfiguration) {
    let has_test_plan = serde_json::to_value(&*goose)
        .ok()
        .and_then(|value| value.get("test_plan").cloned())
        .is_some_and(|plan| !plan.is_null());
    if has_test_plan {
        return;
    }
    if goose.run_time.is_none() && goose.iterations.is_none() {
        eprintln!("loadtest: no --run-time or --iterations: the run stops after {DEFAULT_RUN_TIME}");
        goose.run_time = Some(DEFAULT_RUN_TIME.into());
    }
    let users = *goose.users.get_or_insert(DEFAULT_USERS);
    if goose.increase_rate.is_none() && goose.increase_time.is_none() {
        goose.increase_rate = Some(users.to_string());
    }
}

fn attack(
    goose: GooseConfiguration,
    weights: &Weights,
    workload: &Arc<Workload>,
) -> anyhow::Result<GooseAttack> {
    let mut attack = GooseAttack::initialize_with_config(goose)?;
    for scenario in scenarios::build(weights, workload)? {
        attack = attack.register_scenario(scenario);
    }
    Ok(attack)
}

async fn start_local(redis_cluster: bool) -> anyhow::Result<(LocalStack, App)> {
    let redis = if redis_cluster {
        harness::RedisMode::Cluster
    } else {
        harness::RedisMode::Single
    };
    eprintln!("loadtest: starting PostgreSQL, Redis ({redis:?}) and Kafka (local processes)");
    let stack = LocalStack::start("loadtest", redis).await?;
    let service = stack.spawn(stack.settings().clone(), &harness::app::ALL).await?;
    eprintln!("loadtest: service listening at {}", service.endpoint());
    Ok((stack, service))
}

/// The service's logs (warnings and up unless `RUST_LOG` says otherwise) on stderr. goose logs
/// through the `log` crate with a logger of its own, so this subscriber does not take `log` over.
fn init_tracing() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .finish();
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn our_flags_and_goose_flags_live_together() {
        Cli::command().debug_assert();
        let cli = parse(&[
            "--start-service",
            "-u",
            "4",
            "-t",
            "10s",
            "--weights",
            "warm-reads=1",
            "--report-file",
            "r.html",
        ]);
        let Ok(cli) = cli else { panic!("refused: {cli:?}") };
        assert!(cli.options.start_service);
        assert_eq!(cli.goose.users, Some(4));
        assert_eq!(cli.goose.run_time.as_deref(), Some("10s"));
        assert_eq!(cli.goose.report_file, vec!["r.html".to_string()]);
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for args in [
            &["--start-service", "--host", "http://127.0.0.1:1"][..],
            &["--weights", "everything=1"],
            &["--orders", "0"],
            &["--probe-rate", "-5"],
            &["--probe-rate", "NaN"],
            &["--cache", "lukewarm"],
            &["--no-such-flag"],
            &["--users", "many"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn remote_hosts_need_consent_and_cold_reads_need_redis() {
        let refused = |args: &[&str]| match parse(args) {
            Ok(cli) => check(&cli.options, &cli.goose).is_err(),
            Err(_) => true,
        };
        assert!(refused(&["-H", "http://10.1.2.3:50051"]));
        assert!(!refused(&["-H", "http://10.1.2.3:50051", "--allow-remote"]));
        assert!(refused(&["--weights", "cold-reads=1"]));
        assert!(!refused(&[
            "--weights",
            "cold-reads=1",
            "--redis-url",
            "redis://127.0.0.1:6379/"
        ]));
        assert!(refused(&["--cache", "flush"]));
        assert!(!refused(&[
            "--start-service",
            "--cache",
            "flush",
            "--weights",
            "cold-reads=1"
        ]));
        assert!(refused(&["--report-file", "report.pdf"]));
        assert!(refused(&["--report-file"]), "goose's run folder is not supported");
    }

    #[test]
    fn runs_are_bounded_by_default() {
        let Ok(mut cli) = parse(&[]) else {
            panic!("no arguments refused")
        };
        complete_goose_defaults(&mut cli.goose);
        assert_eq!(cli.goose.run_time.as_deref(), Some(DEFAULT_RUN_TIME));
        assert_eq!(cli.goose.users, Some(DEFAULT_USERS));

        let Ok(mut cli) = parse(&["--iterations", "3"]) else {
            panic!("refused")
        };
        complete_goose_defaults(&mut cli.goose);
        assert_eq!(cli.goose.run_time, None);

        let Ok(mut cli) = parse(&["--test-plan", "4,5s;0,1s"]) else {
            panic!("refused")
        };
        complete_goose_defaults(&mut cli.goose);
        assert_eq!((cli.goose.run_time, cli.goose.users), (None, None));
    }
}
