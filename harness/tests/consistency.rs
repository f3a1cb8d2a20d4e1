//! Cache consistency, checked against the real service, Kafka, Redis and PostgreSQL.
//!
//! * A fixed tour: every fault kind at least once, several rebalances, thousands of writes.
//! * proptest: generated scenarios of operations and faults, shrunk to a short sequence on failure.
//! * Proof that it can fail: each deliberately broken variant of the service must be caught, by the
//!   invariant it breaks, and the scenario that caught it printed with the seed that generates it.
//!
//! Every run must also reach its floors (writes answered, reads served by the cache, writes the
//! pipeline had to carry, rebalances the updaters counted, keys evicted): a run that did not do the
//! work proves nothing, and fails its test whatever the verdict. A run that could not be carried out
//! (the stack failed, the probe never got through) fails its test too: it is never a catch.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use harness::consistency::scenario::{
    Assignment, Fault, FaultKind, Scenario, Step, cluster_fault_strategy, fault_strategy, scenario_strategy,
};
use harness::consistency::workload::Mix;
use harness::consistency::{ClusterConfig, Invariant, Report, check, run};
use harness::node::Variant;
use harness::{RedisMode, Stack, StackOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner};

/// One runtime and one stack per test; runs happen one after another on it.
struct Harness {
    runtime: tokio::runtime::Runtime,
    stack: Stack,
    /// The instances' logs: `CONSISTENCY_LOGS` if set (kept), else a temporary directory.
    logs: Logs,
    runs: std::cell::Cell<usize>,
}

impl Harness {
    fn start() -> Self {
        Self::with(1, RedisMode::Single)
    }

    fn with_kafka_nodes(kafka_nodes: usize) -> Self {
        Self::with(kafka_nodes, RedisMode::Single)
    }

    fn with(kafka_nodes: usize, redis: RedisMode) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        harness::app::require_own_stack_group();
        let options = StackOptions {
            kafka_nodes,
            ..StackOptions::local(redis)
        };
        let stack = runtime
            .block_on(Stack::start(options))
            .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
        Self {
            runtime,
            stack,
            logs: Logs::new(),
            runs: std::cell::Cell::new(0),
        }
    }

    /// Runs `scenario` against `variant` and checks it; `Err` if the run could not be carried out, or
    /// did not reach its floors.
    fn run(&self, scenario: &Scenario, variant: Variant) -> Result<Report, String> {
        let index = self.runs.get() + 1;
        self.runs.set(index);
        let config = ClusterConfig {
            node_binary: PathBuf::from(env!("CARGO_BIN_EXE_orders-node")),
            variant,
            assignment: scenario.assignment,
            partitions: 3,
            log_dir: self.logs.path(),
            pace: None,
            mix: Mix::Everything,
            initial_updaters: 1,
        };
        println!("run {index}, {variant:?}:\n{scenario}");
        let name = format!("run{}_{index}", std::process::id());
        let outcome = self
            .runtime
            .block_on(run(&self.stack, config, scenario.steps.clone(), &name, |_, _| {}))
            .map_err(|e| format!("the run could not be carried out: {}", chain(&e)))?;
        let report = check(&outcome);
        print(&report);
        if report.shortfalls.is_empty() {
            Ok(report)
        } else {
            Err(format!(
                "the run did not do enough to mean anything:\n{}",
                report.shortfalls.join("\n")
            ))
        }
    }

    /// [`run`](Self::run), for a correct variant: any violation fails the test.
    fn run_consistent(&self, scenario: &Scenario) -> Report {
        let report = self
            .run(scenario, Variant::Correct)
            .unwrap_or_else(|e| panic!("{scenario}\n{e}"));
        assert!(report.is_consistent(), "{scenario}\n{}", report.summary(20));
        report
    }
}

/// A test that fails leaves its service processes' logs beside its servers' (the stack's own drop).
impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            harness::test_logs::keep(&self.logs.path(), "service-processes");
        }
    }
}

enum Logs {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Logs {
    fn new() -> Self {
        match std::env::var_os("CONSISTENCY_LOGS") {
            Some(dir) => Self::Kept(PathBuf::from(dir)),
            None => Self::Temporary(tempfile::tempdir().expect("a log directory")),
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            Self::Kept(dir) => dir.clone(),
            Self::Temporary(dir) => dir.path().to_path_buf(),
        }
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn print(report: &Report) {
    let s = &report.stats;
    let st = &report.staleness;
    println!(
        "{} operations ({} writes, {} reads of which {} orders from the cache, {} refused, {} unknown), \
         {} orders, {} committed versions, faults {:?}, {} rebalances, {} keys evicted, {:.1} s",
        s.operations,
        s.writes,
        s.reads,
        s.cache_reads,
        s.refused,
        s.unknown,
        s.orders,
        s.committed_versions,
        s.faults,
        s.rebalances,
        s.evicted_keys,
        s.duration_s
    );
    println!("calls without an answer, by reason: {:?}", s.unknown_reasons);
    for (name, d) in [("no fault", &st.no_fault), ("during faults", &st.during_fault)] {
        println!(
            "staleness {name}: {} writes ({} samples), p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, \
             {:.2}% within 1 s, {:.2}% within 5 s",
            d.writes,
            d.samples,
            d.p50_ms,
            d.p99_ms,
            d.max_ms,
            d.within_1s * 100.0,
            d.within_5s * 100.0
        );
    }
    if !report.is_consistent() {
        println!("violations:\n{}", report.summary(10));
    }
}

/// Every fault kind, traffic around each, about 4000 operations.
fn tour(assignment: Assignment) -> Scenario {
    let faults = [
        Fault::AddUpdater,
        Fault::AddUpdater,
        Fault::KillUpdater,
        Fault::RemoveUpdater,
        Fault::KillApi,
        Fault::KafkaDown { kill_api: true },
        Fault::KafkaKill,
        Fault::RedisRestart,
        Fault::RedisFlush,
        Fault::RedisEvict,
        Fault::RedisPause {
            restart_updater: true,
        },
        Fault::RedisRefusesWrites,
        Fault::PostgresRestart,
        Fault::RemoveUpdater,
    ];
    let mut steps = vec![Step::Create { count: 20 }];
    for (seed, fault) in (1u64..).zip(faults) {
        steps.push(Step::Traffic {
            count: 300,
            clients: 4,
            seed,
        });
        steps.push(Step::Race { clients: 3, seed });
        steps.push(Step::Fault {
            fault,
            traffic: 150,
            seed: seed * 1000,
        });
        steps.push(Step::Create { count: 6 });
    }
    Scenario { assignment, steps }
}

#[test]
fn a_tour_of_every_fault_keeps_the_cache_consistent() {
    let harness = Harness::start();
    let report = harness.run_consistent(&tour(Assignment::Range));
    assert!(
        report.stats.writes >= 1000,
        "a tour checks thousands of writes: {}",
        report.stats.writes
    );
    let single_redis_kinds = FaultKind::ALL
        .iter()
        .filter(|kind| kind.runs_on(RedisMode::Single))
        .count();
    assert_eq!(
        report.stats.faults.len(),
        single_redis_kinds,
        "every fault kind of a single Redis ran: {:?}",
        report.stats.faults
    );
    assert!(
        report.stats.rebalances >= 6,
        "partitions moved in each of the 6 changes of the group: {}",
        report.stats.rebalances
    );
}

/// With three Kafka nodes, losing one (kill -9, several times, under traffic and a rebalance) loses nothing.
#[test]
fn losing_one_of_three_brokers_keeps_the_cache_consistent() {
    let harness = Harness::with_kafka_nodes(3);
    let mut steps = vec![Step::Create { count: 10 }];
    for seed in 0..3u64 {
        steps.push(Step::Traffic {
            count: 150,
            clients: 3,
            seed,
        });
        steps.push(Step::Fault {
            fault: Fault::KafkaKill,
            traffic: 150,
            seed,
        });
    }
    steps.push(Step::Fault {
        fault: Fault::AddUpdater,
        traffic: 100,
        seed: 7,
    });
    let scenario = Scenario {
        assignment: Assignment::CooperativeSticky,
        steps,
    };
    let report = harness.run_consistent(&scenario);
    assert_eq!(report.stats.faults.get(&FaultKind::KafkaKill), Some(&3));
}

/// A few cases each (every case is a real run of several seconds); shrinking is bounded for the same
/// reason. `CONSISTENCY_CASES` runs more generated cases.
///
/// The cases come from one seed, printed first: `CONSISTENCY_SEED=<seed>` generates the same
/// scenarios again, step for step. A scenario the correct service failed is shrunk and kept in
/// `consistency.proptest-regressions` beside this file, which every later run tries first. A catch of
/// a broken variant is the expected outcome: it is neither kept nor shrunk (shrinking reran the caught
/// scenario up to three times to print a shorter one, about a tenth of the suite's time, and decided
/// nothing).
fn runner(cases: u32, purpose: Purpose) -> TestRunner {
    let seed = std::env::var("CONSISTENCY_SEED")
        .ok()
        .map(|text| {
            text.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("CONSISTENCY_SEED={text:?} is not a number"))
        })
        .unwrap_or_else(rand::random);
    println!("generated scenarios from seed {seed} (replay them: CONSISTENCY_SEED={seed})");
    let (max_shrink_iters, failure_persistence) = match purpose {
        Purpose::Check => (
            3,
            Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions")) as Box<_>),
        ),
        Purpose::Catch => (0, None),
    };
    TestRunner::new(Config {
        cases,
        max_shrink_iters,
        rng_seed: RngSeed::Fixed(seed),
        source_file: Some(file!()),
        failure_persistence,
        ..Config::default()
    })
}

/// What the generated cases are for.
#[derive(Clone, Copy)]
enum Purpose {
    /// The correct service must pass every case: a failing one is shrunk and kept.
    Check,
    /// A broken variant must fail one: that case ends the search.
    Catch,
}

fn cases_from_env(default: u32) -> u32 {
    std::env::var("CONSISTENCY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `body` for each generated case. Errors of the runs themselves (and panics of the harness) are
/// kept aside and fail the test at the end, whatever proptest concluded: proptest counts a panic as
/// a failing case, which would pass for a catch.
fn each_case(
    cases: u32,
    purpose: Purpose,
    strategy: impl Strategy<Value = Scenario>,
    body: impl Fn(&Scenario) -> Result<Result<(), String>, String>,
) -> Result<(), TestError<Scenario>> {
    let errors = RefCell::new(Vec::new());
    let result = runner(cases, purpose).run(&strategy, |scenario| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| body(&scenario))) {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(failure))) => Err(TestCaseError::fail(failure)),
            Ok(Err(error)) => {
                errors.borrow_mut().push(format!("{scenario}{error}"));
                Ok(())
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                errors
                    .borrow_mut()
                    .push(format!("{scenario}the harness panicked: {message}"));
                Ok(())
            }
        }
    });
    let errors = errors.into_inner();
    assert!(
        errors.is_empty(),
        "runs that could not be carried out:\n{}",
        errors.join("\n\n")
    );
    result
}

/// Runs generated scenarios against the correct service with slow fills (reads hold the read-through
/// race window open for up to 500 ms); any violation fails the test, shrunk.
fn assert_consistent(strategy: impl Strategy<Value = Scenario>) {
    assert_consistent_on(&Harness::start(), strategy);
}

/// [`assert_consistent`] on a given harness.
fn assert_consistent_on(harness: &Harness, strategy: impl Strategy<Value = Scenario>) {
    let result = each_case(cases_from_env(4), Purpose::Check, strategy, |scenario| {
        let report = harness.run(scenario, Variant::SlowFill)?;
        Ok(if report.is_consistent() {
            Ok(())
        } else {
            Err(format!("{scenario}\n{}", report.summary(20)))
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn generated_scenarios_keep_the_cache_consistent() {
    assert_consistent(scenario_strategy(3..=6, fault_strategy().boxed()));
}

/// Runs generated scenarios against a broken `variant` and requires the checker to catch it by one of
/// the invariants it breaks. A violation of an invariant that does not follow from the bug fails the
/// test: the variant was caught for the wrong reason, or the harness broke something itself.
fn assert_caught(variant: Variant, strategy: impl Strategy<Value = Scenario>) {
    assert_caught_on(&Harness::start(), variant, strategy);
}

/// [`assert_caught`] on a given harness (a Redis Cluster, say).
fn assert_caught_on(harness: &Harness, variant: Variant, strategy: impl Strategy<Value = Scenario>) {
    let expected = variant.breaks();
    assert!(!expected.is_empty(), "{variant:?} is not a broken variant");
    let allowed: Vec<Invariant> = expected.iter().chain(variant.may_also_break()).copied().collect();
    let wrong_reason = RefCell::new(Vec::new());
    // Up to 8 generated scenarios; a caught case ends the search. Each variant's scenarios are built to
    // expose its bug by construction where a fault stage can do so (offsets stored on receipt: see
    // `the_checker_catches_offsets_stored_on_receipt`), so a case that misses is the checker's to explain.
    let result = each_case(8, Purpose::Catch, strategy, |scenario| {
        let report = harness.run(scenario, variant)?;
        let violated = report.violated();
        let others: Vec<Invariant> = violated
            .iter()
            .copied()
            .filter(|i| !allowed.contains(i))
            .collect();
        if !others.is_empty() {
            wrong_reason
                .borrow_mut()
                .push(format!("{scenario}violated {others:?}:\n{}", report.summary(10)));
        }
        Ok(if violated.iter().any(|i| expected.contains(i)) {
            Err(format!("caught by {violated:?}:\n{}", report.summary(5)))
        } else {
            Ok(())
        })
    });
    let wrong_reason = wrong_reason.into_inner();
    assert!(
        wrong_reason.is_empty(),
        "{variant:?} broke invariants other than {allowed:?}:\n{}",
        wrong_reason.join("\n\n")
    );
    match result {
        Err(TestError::Fail(reason, shrunk)) => {
            println!("{variant:?} caught by\n{shrunk}checker: {reason}");
        }
        Err(TestError::Abort(reason)) => panic!("{variant:?}: the run was aborted: {reason}"),
        Ok(()) => panic!("the checker did not catch the broken variant {variant:?}"),
    }
}

/// Scenarios that start with orders and then run `steps`, in either assignment.
fn with_steps(steps: impl Strategy<Value = Vec<Step>>) -> impl Strategy<Value = Scenario> {
    let assignment = prop_oneof![Just(Assignment::Range), Just(Assignment::CooperativeSticky)];
    (assignment, steps).prop_map(|(assignment, rest)| {
        let mut steps = vec![Step::Create { count: 6 }];
        steps.extend(rest);
        Scenario { assignment, steps }
    })
}

fn traffic() -> impl Strategy<Value = Step> {
    (100u16..=250, 3u8..=4, any::<u64>()).prop_map(|(count, clients, seed)| Step::Traffic {
        count,
        clients,
        seed,
    })
}

fn fault(fault: Fault) -> impl Strategy<Value = Step> {
    (40u16..=100, any::<u64>()).prop_map(move |(traffic, seed)| Step::Fault { fault, traffic, seed })
}

/// Key loss of every kind, under traffic: what a late fill needs to bring back an older version.
fn key_loss() -> impl Strategy<Value = Step> {
    let lose = prop_oneof![
        Just(Fault::RedisFlush),
        Just(Fault::RedisEvict),
        Just(Fault::RedisRestart),
    ];
    (lose, 100u16..=200, any::<u64>()).prop_map(|(fault, traffic, seed)| Step::Fault { fault, traffic, seed })
}

#[test]
fn the_checker_catches_a_blind_cache_write() {
    assert_caught(
        Variant::BlindCacheWrite,
        with_steps((traffic(), fault(Fault::KillUpdater), traffic()).prop_map(|(a, b, c)| vec![a, b, c])),
    );
}

#[test]
fn the_checker_catches_commit_then_produce() {
    assert_caught(
        Variant::CommitThenProduce,
        with_steps((traffic(), fault(Fault::KafkaDown { kill_api: true })).prop_map(|(a, b)| vec![a, b])),
    );
}

#[test]
fn the_checker_catches_a_blind_fill_on_a_miss() {
    assert_caught(
        Variant::BlindFill,
        with_steps((traffic(), traffic()).prop_map(|(a, b)| vec![a, b])),
    );
}

#[test]
fn the_checker_catches_a_fill_without_a_lease() {
    assert_caught(
        Variant::FillWithoutLease,
        with_steps((traffic(), key_loss(), key_loss(), traffic()).prop_map(|(a, b, c, d)| vec![a, b, c, d])),
    );
}

/// The correct service under the very scenarios that catch the fill without a lease.
#[test]
fn fills_under_leases_survive_the_key_loss_that_catches_the_fill_without_one() {
    assert_consistent(with_steps(
        (traffic(), key_loss(), key_loss(), traffic()).prop_map(|(a, b, c, d)| vec![a, b, c, d]),
    ));
}

#[test]
fn the_checker_catches_offsets_stored_on_receipt() {
    // The fault stage makes the loss certain (consistency/faults.rs, `refuse_writes_and_replace_holders`):
    // the pipeline quiescent, orders in progress with entries in Redis, each changed once while Redis
    // refuses the updater's scripts, and the updaters replaced only once every change is in the topic
    // and an updater was refused some of them. Acknowledged on receipt, those are committed past and
    // never written (a refused write does not land later, as one sent to a paused Redis does when it
    // resumes), and no later change repairs them: convergence fails in every case. Before, the stage
    // was a pause with random traffic and a fixed 1.5 s wait, and about one case in three was caught.
    let refuse = (5u16..=20, any::<u64>()).prop_map(|(traffic, seed)| Step::Fault {
        fault: Fault::RedisRefusesWrites,
        traffic,
        seed,
    });
    assert_caught(
        Variant::StoreOnReceipt,
        with_steps((traffic(), refuse).prop_map(|(a, b)| vec![a, b])),
    );
}

/// Key loss on a Redis Cluster: every master flushed, or a master killed (its replica takes over
/// with whatever it had copied).
fn cluster_key_loss() -> impl Strategy<Value = Step> {
    let lose = prop_oneof![Just(Fault::RedisFlush), Just(Fault::RedisMasterKill)];
    (lose, 100u16..=200, any::<u64>()).prop_map(|(fault, traffic, seed)| Step::Fault { fault, traffic, seed })
}

/// On a Redis Cluster: masters killed under load (each failed over to its replica, then back as a
/// replica itself), a master paused until its replica took over (then resumed: it must learn it was
/// replaced before it answers again), and every key flushed; the cache stays consistent.
///
/// The pause was kept out of this test until the harness's own reader replaced a connection that
/// timed out (before that, one run saw an entry at version 5, then 4); since then a soak of 15 pauses
/// under 600 operations/s found 0 inconsistencies in 26,474 versions (docs/CONSISTENCY.md, section 6).
#[test]
fn on_a_redis_cluster_masters_killed_or_paused_under_load_leave_the_cache_consistent() {
    let harness = Harness::with(1, RedisMode::Cluster);
    let faults = [
        Fault::RedisMasterKill,
        Fault::RedisFlush,
        Fault::RedisMasterPause,
        Fault::RedisMasterKill,
        Fault::AddUpdater,
        Fault::RedisMasterKill,
    ];
    let mut steps = vec![Step::Create { count: 12 }];
    for (seed, fault) in (1u64..).zip(faults) {
        steps.push(Step::Traffic {
            count: 200,
            clients: 4,
            seed,
        });
        steps.push(Step::Fault {
            fault,
            traffic: 200,
            seed,
        });
    }
    steps.push(Step::Traffic {
        count: 200,
        clients: 4,
        seed: 9,
    });
    let scenario = Scenario {
        assignment: Assignment::CooperativeSticky,
        steps,
    };
    let report = harness.run_consistent(&scenario);
    assert_eq!(report.stats.faults.get(&FaultKind::RedisMasterKill), Some(&3));
    assert_eq!(report.stats.faults.get(&FaultKind::RedisMasterPause), Some(&1));
}

/// The same cluster catches the service before leases, by key loss under slow fills.
#[test]
fn on_a_redis_cluster_the_checker_catches_a_fill_without_a_lease() {
    assert_caught_on(
        &Harness::with(1, RedisMode::Cluster),
        Variant::FillWithoutLease,
        with_steps(
            (traffic(), cluster_key_loss(), cluster_key_loss(), traffic())
                .prop_map(|(a, b, c, d)| vec![a, b, c, d]),
        ),
    );
}

/// And generated scenarios of the cluster's faults keep the correct service (with slow fills)
/// consistent.
#[test]
fn on_a_redis_cluster_generated_scenarios_keep_the_cache_consistent() {
    assert_consistent_on(
        &Harness::with(1, RedisMode::Cluster),
        scenario_strategy(3..=5, cluster_fault_strategy().boxed()),
    );
}
