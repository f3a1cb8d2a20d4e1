//! A consistency checker for consumer groups, in the style of Jepsen's Kafka test.
//!
//! The tests record into a [`History`] what was produced (partition and offset, from the producer's
//! acknowledgements), what each group member was delivered and what it handled (with the assignment
//! epoch the consumer reports and the time), and samples of the group's committed offsets (with the time
//! the broker's answer arrived). [`History::check`] then verifies:
//!
//! 1. **No loss:** every produced message was handled at least once by the group.
//! 2. **Order within an assignment:** for one member, partition and epoch, delivered offsets strictly
//!    increase, and
//! 3. **no skips within an assignment:** each delivered offset is the next *produced* offset after the
//!    previous one (Jepsen's "poll skip").
//! 4. **Commits never pass an unhandled message:** for every sample, every produced offset below the
//!    committed one had been handled before the sample was answered. (A member records a message as
//!    handled just *before* calling `handle()`, so a correct commit is always later than the record.)
//! 5. **Duplicates only from re-delivery after a rebalance:** a message is delivered at most once per
//!    assignment; deliveries in later assignments (after a rebalance or a restart) are allowed and
//!    counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Which group member (consumer instance) of a test.
pub type MemberId = usize;

/// One delivery or handling of a message.
#[derive(Debug, Clone, Copy)]
struct Event {
    member: MemberId,
    partition: i32,
    offset: i64,
    epoch: u64,
    at: Instant,
}

impl Event {
    fn assignment(&self) -> (MemberId, i32, u64) {
        (self.member, self.partition, self.epoch)
    }
}

#[derive(Debug)]
struct CommitSample {
    at: Instant,
    offsets: BTreeMap<i32, i64>,
}

#[derive(Debug, Default)]
struct Log {
    produced: BTreeMap<i32, BTreeSet<i64>>,
    deliveries: Vec<Event>,
    handlings: Vec<Event>,
    commits: Vec<CommitSample>,
}

/// What happened, as the test saw it. Shared by the producer, the members and the commit sampler.
#[derive(Debug, Default)]
pub struct History {
    log: Mutex<Log>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn produced(&self, partition: i32, offset: i64) {
        self.log().produced.entry(partition).or_default().insert(offset);
    }

    pub fn delivered(&self, member: MemberId, partition: i32, offset: i64, epoch: u64) {
        let at = Instant::now();
        self.log().deliveries.push(Event {
            member,
            partition,
            offset,
            epoch,
            at,
        });
    }

    pub fn handled(&self, member: MemberId, partition: i32, offset: i64, epoch: u64) {
        let at = Instant::now();
        self.log().handlings.push(Event {
            member,
            partition,
            offset,
            epoch,
            at,
        });
    }

    pub fn committed(&self, at: Instant, offsets: BTreeMap<i32, i64>) {
        self.log().commits.push(CommitSample { at, offsets });
    }

    /// How many produced messages nobody has handled yet.
    pub fn unhandled(&self) -> usize {
        let log = self.log();
        let handled: BTreeSet<(i32, i64)> = log.handlings.iter().map(|e| (e.partition, e.offset)).collect();
        log.produced
            .iter()
            .flat_map(|(&p, offsets)| offsets.iter().map(move |&o| (p, o)))
            .filter(|message| !handled.contains(message))
            .count()
    }

    /// The `(partition, offset)`s delivered to `member`, in delivery order.
    pub fn deliveries_to(&self, member: MemberId) -> Vec<(i32, i64)> {
        let log = self.log();
        log.deliveries
            .iter()
            .filter(|e| e.member == member)
            .map(|e| (e.partition, e.offset))
            .collect()
    }

    /// When `(partition, offset)` was first delivered to anyone.
    pub fn first_delivery_at(&self, partition: i32, offset: i64) -> Option<Instant> {
        let log = self.log();
        log.deliveries
            .iter()
            .filter(|e| e.partition == partition && e.offset == offset)
            .map(|e| e.at)
            .min()
    }

    /// The distinct `(partition, epoch)` assignments in which `member` was delivered messages.
    pub fn assignments_of(&self, member: MemberId) -> BTreeSet<(i32, u64)> {
        let log = self.log();
        log.deliveries
            .iter()
            .filter(|e| e.member == member)
            .map(|e| (e.partition, e.epoch))
            .collect()
    }

    /// Runs every check; see the module documentation.
    pub fn check(&self) -> Report {
        let log = self.log();
        let mut report = Report {
            produced: log.produced.values().map(BTreeSet::len).sum(),
            delivered: log.deliveries.len(),
            handled: log.handlings.len(),
            assignments: log
                .deliveries
                .iter()
                .map(Event::assignment)
                .collect::<BTreeSet<_>>()
                .len(),
            commit_samples: log.commits.len(),
            ..Report::default()
        };

        // 1. No loss.
        let mut first_handled: HashMap<(i32, i64), Instant> = HashMap::new();
        for event in &log.handlings {
            let at = first_handled
                .entry((event.partition, event.offset))
                .or_insert(event.at);
            *at = (*at).min(event.at);
        }
        for (&partition, offsets) in &log.produced {
            for &offset in offsets {
                if !first_handled.contains_key(&(partition, offset)) {
                    report.lost.push((partition, offset));
                }
            }
        }

        // 2 and 3. Order and no skips within an assignment.
        let mut by_assignment: BTreeMap<(MemberId, i32, u64), Vec<i64>> = BTreeMap::new();
        for event in &log.deliveries {
            by_assignment
                .entry(event.assignment())
                .or_default()
                .push(event.offset);
        }
        let empty = BTreeSet::new();
        for ((member, partition, epoch), offsets) in &by_assignment {
            let produced = log.produced.get(partition).unwrap_or(&empty);
            for pair in offsets.windows(2) {
                let (previous, next) = (pair[0], pair[1]);
                if next <= previous {
                    report.out_of_order.push(format!(
                        "member {member}, partition {partition}, epoch {epoch}: offset {next} after {previous}"
                    ));
                } else if let Some(&expected) = produced.range(previous + 1..).next()
                    && expected < next
                {
                    report.skipped.push(format!(
                        "member {member}, partition {partition}, epoch {epoch}: {previous} then {next}, \
                         skipping {expected}"
                    ));
                }
            }
        }

        // 4. Commits never pass an unhandled message.
        for sample in &log.commits {
            for (&partition, &committed) in &sample.offsets {
                let produced = log.produced.get(&partition).unwrap_or(&empty);
                let unhandled: Vec<i64> = produced
                    .range(..committed)
                    .copied()
                    .filter(|&offset| {
                        first_handled
                            .get(&(partition, offset))
                            .is_none_or(|&at| at > sample.at)
                    })
                    .collect();
                if let Some(first) = unhandled.first() {
                    report.committed_past_unhandled.push(format!(
                        "partition {partition}: committed {committed} while {} message(s) below it were not \
                         handled (first: offset {first})",
                        unhandled.len()
                    ));
                }
            }
        }

        // 5. Duplicates.
        let mut deliveries_of: HashMap<(i32, i64), Vec<(MemberId, u64)>> = HashMap::new();
        for event in &log.deliveries {
            deliveries_of
                .entry((event.partition, event.offset))
                .or_default()
                .push((event.member, event.epoch));
        }
        for ((partition, offset), assignments) in &deliveries_of {
            let distinct: BTreeSet<_> = assignments.iter().collect();
            if distinct.len() < assignments.len() {
                report.delivered_twice_in_one_assignment.push(format!(
                    "partition {partition}, offset {offset}: {assignments:?} (member, epoch)"
                ));
            }
            report.redelivered += assignments.len() - 1;
        }
        let mut handled_count: HashMap<(i32, i64), usize> = HashMap::new();
        for event in &log.handlings {
            *handled_count.entry((event.partition, event.offset)).or_default() += 1;
        }
        report.handled_more_than_once = handled_count.values().filter(|&&n| n > 1).count();
        report.lost.sort();
        report.delivered_twice_in_one_assignment.sort();
        report
    }
}

/// What [`History::check`] found.
#[derive(Debug, Default)]
pub struct Report {
    pub produced: usize,
    pub delivered: usize,
    pub handled: usize,
    /// Distinct (member, partition, epoch) that saw deliveries.
    pub assignments: usize,
    pub commit_samples: usize,
    /// Produced and never handled, as (partition, offset).
    pub lost: Vec<(i32, i64)>,
    pub out_of_order: Vec<String>,
    pub skipped: Vec<String>,
    pub committed_past_unhandled: Vec<String>,
    pub delivered_twice_in_one_assignment: Vec<String>,
    /// Deliveries of a message already delivered in an earlier assignment (allowed, counted).
    pub redelivered: usize,
    /// Messages handled more than once (allowed after re-delivery, counted).
    pub handled_more_than_once: usize,
}

impl Report {
    /// True if no invariant was broken.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty()
            && self.out_of_order.is_empty()
            && self.skipped.is_empty()
            && self.committed_past_unhandled.is_empty()
            && self.delivered_twice_in_one_assignment.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checker: {} produced, {} delivered in {} assignments, {} handled, {} commit samples",
            self.produced, self.delivered, self.assignments, self.handled, self.commit_samples
        )?;
        writeln!(
            f,
            "  duplicates: {} re-deliveries after a rebalance or restart, {} messages handled more than once",
            self.redelivered, self.handled_more_than_once
        )?;
        let lost: Vec<String> = self
            .lost
            .iter()
            .take(10)
            .map(|(p, o)| format!("{p}@{o}"))
            .collect();
        let sections: [(&str, Vec<String>, usize); 5] = [
            ("LOST (never handled)", lost, self.lost.len()),
            (
                "OUT OF ORDER within an assignment",
                self.out_of_order.clone(),
                self.out_of_order.len(),
            ),
            (
                "SKIPPED within an assignment",
                self.skipped.clone(),
                self.skipped.len(),
            ),
            (
                "COMMITTED PAST AN UNHANDLED MESSAGE",
                self.committed_past_unhandled.clone(),
                self.committed_past_unhandled.len(),
            ),
            (
                "DELIVERED TWICE IN ONE ASSIGNMENT",
                self.delivered_twice_in_one_assignment.clone(),
                self.delivered_twice_in_one_assignment.len(),
            ),
        ];
        for (title, items, total) in sections {
            if total > 0 {
                writeln!(f, "  {title}: {total}")?;
                for item in items.iter().take(10) {
                    writeln!(f, "    {item}")?;
                }
            }
        }
        if self.is_valid() {
            writeln!(f, "  valid")?;
        }
        Ok(())
    }
}

/// The checker checked: hand-made histories, each breaking one invariant, must be reported. A plain
/// function, called from a `#[test]` of `channel_consumer.rs`, so that it runs once and not in every
/// binary that includes this module.
pub fn self_test() {
    let t0 = Instant::now();
    let later = |ms: u64| t0 + std::time::Duration::from_millis(ms);

    let valid = History::new();
    for offset in 0..3 {
        valid.produced(0, offset);
        valid.delivered(1, 0, offset, 1);
        valid.handled(1, 0, offset, 1);
    }
    valid.committed(Instant::now(), BTreeMap::from([(0, 3)]));
    let report = valid.check();
    assert!(report.is_valid(), "{report}");

    let lost = History::new();
    lost.produced(0, 0);
    lost.produced(0, 1);
    lost.delivered(1, 0, 0, 1);
    lost.handled(1, 0, 0, 1);
    assert_eq!(lost.check().lost, vec![(0, 1)]);

    let reordered = History::new();
    for offset in [0, 1] {
        reordered.produced(0, offset);
        reordered.handled(1, 0, offset, 1);
    }
    reordered.delivered(1, 0, 1, 1);
    reordered.delivered(1, 0, 0, 1);
    assert_eq!(reordered.check().out_of_order.len(), 1);
    reordered.delivered(2, 0, 0, 5); // a new assignment may start over: not a violation
    assert_eq!(reordered.check().out_of_order.len(), 1);

    let skipping = History::new();
    for offset in [0, 1, 2] {
        skipping.produced(0, offset);
        skipping.handled(1, 0, offset, 1);
    }
    skipping.delivered(1, 0, 0, 1);
    skipping.delivered(1, 0, 2, 1);
    assert_eq!(skipping.check().skipped.len(), 1);

    let early_commit = History::new();
    early_commit.produced(0, 0);
    early_commit.produced(0, 1);
    early_commit.committed(later(0), BTreeMap::from([(0, 2)]));
    std::thread::sleep(std::time::Duration::from_millis(2));
    early_commit.handled(1, 0, 0, 1);
    early_commit.handled(1, 0, 1, 1);
    let report = early_commit.check();
    assert!(report.lost.is_empty());
    assert_eq!(report.committed_past_unhandled.len(), 1, "{report}");

    let duplicated = History::new();
    duplicated.produced(0, 0);
    duplicated.handled(1, 0, 0, 1);
    duplicated.delivered(1, 0, 0, 1);
    duplicated.delivered(2, 0, 0, 7);
    let report = duplicated.check();
    assert!(
        report.is_valid(),
        "a re-delivery in another assignment is allowed: {report}"
    );
    assert_eq!(report.redelivered, 1);
    duplicated.delivered(2, 0, 0, 7);
    assert_eq!(duplicated.check().delivered_twice_in_one_assignment.len(), 1);
}
