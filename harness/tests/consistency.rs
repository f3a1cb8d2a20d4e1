//! Cache consistency, checked against the real service, Kafka, Redis and PostgreSQL.
//!
//! * A fixed tour: every fault kind at least once, several rebalances, thousands of writes.
//! * proptest: generated scenarios of operations and faults, shrunk to a short sequence on failure.
//! * Proof that it can fail: each deliberately broken variant of the service must be caught, and the
//!   failing scenario shrunk. These pass when the checker reports the bug.

use std::path::PathBuf;

use harness::consistency::scenario::{Assignment, Fault, Scenario, Step, fault_strategy, scenario_strategy};
use harness::consistency::{ClusterConfig, Report, check, run};
use harness::{Backend, Stack, StackOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// One runtime and one stack per test; runs happen one after another on it.
struct Harness {
    runtime: tokio::runtime::Runtime,
    stack: Stack,
    logs: tempfile::TempDir,
    runs: std::cell::Cell<usize>,
}

impl Harness {
    fn start() -> Self {
        Self::with_kafka_nodes(1)
    }

    fn with_kafka_nodes(kafka_nodes: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let options = StackOptions {
            backend: Some(Backend::Local),
            kafka_nodes,
            topics: vec![],
        };
        let stack = runtime
            .block_on(Stack::start(options))
            .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
        Self {
            runtime,
            stack,
            logs: tempfile::tempdir().expect("a log directory"),
            runs: std::cell::Cell::new(0),
        }
    }

    fn run(&self, scenario: &Scenario, fault: &str) -> Report {
        let index = self.runs.get() + 1;
        self.runs.set(index);
        let config = ClusterConfig {
            node_binary: PathBuf::from(env!("CARGO_BIN_EXE_orders-node")),
            fault: fault.to_string(),
            assignment: scenario.assignment,
            partitions: 3,
            log_dir: self.logs.path().to_path_buf(),
            pace: None,
            initial_updaters: 1,
        };
        let name = format!("run{}_{index}", std::process::id());
        let outcome = self
            .runtime
            .block_on(run(&self.stack, config, scenario.steps.clone(), &name, |_, _| {}))
            .unwrap_or_else(|e| panic!("the run could not be carried out: {e}"));
        check(&outcome)
    }
}

fn print(report: &Report) {
    let s = &report.stats;
    let st = &report.staleness;
    println!(
        "{} operations ({} writes, {} reads, {} refused, {} unknown), {} orders, {} committed versions, \
         faults {:?}, {} partition assignments, {:.1} s",
        s.operations,
        s.writes,
        s.reads,
        s.refused,
        s.unknown,
        s.orders,
        s.committed_versions,
        s.faults,
        s.rebalances,
        s.duration_s
    );
    println!("calls without an answer, by reason: {:?}", s.unknown_reasons);
    for (name, d) in [("no fault", &st.no_fault), ("during faults", &st.during_fault)] {
        println!(
            "staleness {name}: {} writes, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, {:.2}% within 1 s, {:.2}% within 5 s",
            d.writes,
            d.p50_ms,
            d.p99_ms,
            d.max_ms,
            d.within_1s * 100.0,
            d.within_5s * 100.0
        );
    }
}

/// Every fault kind, traffic around each, about 3000 operations.
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
        Fault::RedisPause {
            restart_updater: true,
        },
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
    let scenario = tour(Assignment::Range);
    let report = harness.run(&scenario, "none");
    print(&report);
    assert!(report.is_consistent(), "{scenario}\n{}", report.summary(20));
    assert!(
        report.stats.writes >= 1000,
        "a tour checks thousands of writes: {}",
        report.stats.writes
    );
    assert_eq!(
        report.stats.faults.len(),
        Fault::KINDS.len(),
        "every fault kind ran: {:?}",
        report.stats.faults
    );
    assert!(
        report.stats.rebalances >= 4,
        "several rebalances: {}",
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
    let report = harness.run(&scenario, "none");
    print(&report);
    assert!(report.is_consistent(), "{scenario}\n{}", report.summary(20));
    assert_eq!(report.stats.faults.get("kafka-kill"), Some(&3));
}

/// A few cases each (every case is a real run of several seconds); shrinking is bounded for the same
/// reason. `CONSISTENCY_CASES` runs more generated cases.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 3,
        failure_persistence: None,
        ..Config::default()
    })
}

fn cases_from_env(default: u32) -> u32 {
    std::env::var("CONSISTENCY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn generated_scenarios_keep_the_cache_consistent() {
    let harness = Harness::start();
    let strategy = scenario_strategy(3..=6, fault_strategy().boxed());
    let result = runner(cases_from_env(4)).run(&strategy, |scenario| {
        // Correct, with slow fills: reads hold the read-through race window open for 250 ms.
        let report = harness.run(&scenario, "slow-fill");
        print(&report);
        if report.is_consistent() {
            Ok(())
        } else {
            Err(TestCaseError::fail(format!("{scenario}\n{}", report.summary(20))))
        }
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// Runs generated scenarios against a broken `variant` and requires the checker to catch it; prints the
/// shrunk scenario and what the checker said.
fn assert_caught(variant: &str, strategy: impl Strategy<Value = Scenario>) {
    let harness = Harness::start();
    let result = runner(4).run(&strategy, |scenario| {
        let report = harness.run(&scenario, variant);
        if report.is_consistent() {
            Ok(())
        } else {
            Err(TestCaseError::fail(report.summary(5)))
        }
    });
    match result {
        Err(TestError::Fail(reason, shrunk)) => {
            println!("{variant} caught; shrunk to\n{shrunk}checker: {reason}");
        }
        Err(TestError::Abort(reason)) => panic!("{variant}: the run was aborted: {reason}"),
        Ok(()) => panic!("the checker did not catch the broken variant {variant}"),
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

#[test]
fn the_checker_catches_a_blind_cache_write() {
    assert_caught(
        "blind-cache-write",
        with_steps((traffic(), fault(Fault::KillUpdater), traffic()).prop_map(|(a, b, c)| vec![a, b, c])),
    );
}

#[test]
fn the_checker_catches_commit_then_produce() {
    assert_caught(
        "commit-then-produce",
        with_steps((traffic(), fault(Fault::KafkaDown { kill_api: true })).prop_map(|(a, b)| vec![a, b])),
    );
}

#[test]
fn the_checker_catches_a_blind_fill_on_a_miss() {
    assert_caught(
        "blind-fill",
        with_steps((traffic(), traffic()).prop_map(|(a, b)| vec![a, b])),
    );
}

#[test]
fn the_checker_catches_offsets_stored_on_receipt() {
    assert_caught(
        "store-on-receipt",
        with_steps(
            (
                traffic(),
                fault(Fault::RedisPause {
                    restart_updater: true,
                }),
            )
                .prop_map(|(a, b)| vec![a, b]),
        ),
    );
}
