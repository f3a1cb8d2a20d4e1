//! When the poll thread pauses a partition, and when it resumes it: a pure function of what the
//! delivery buffer holds and of what the reader holds unhandled, so that the rule can be read and
//! tested apart from librdkafka.
//!
//! Two counts per partition: *queued*, its messages in the buffer; *outstanding*, its messages not yet
//! behind the stored offset (queued, taken by the reader and not handled, or handled behind one that
//! is not). With `share = consume_size / assigned partitions` (at least 1):
//!
//! * **Pause** a partition when the buffer is full (`consume_size` messages or more, after the reader's
//!   grace) and the partition holds at least its share of it: the reader is slow. A full buffer always
//!   has one: the partitions with a backlog stop, the others may still fill up to their share, so none
//!   is kept out.
//! * **Pause** it too when everything outstanding reaches twice `consume_size` (the buffer, and one
//!   batch in the reader's hands) and the partition has at least two shares of it: the reader takes
//!   messages and does not handle them (it hoards). Taking from the buffer would otherwise let it hold
//!   without bound, and one message held freezes its partition's commits. At the bound (three times
//!   `consume_size`, [`outstanding_bound`]) every partition with anything outstanding is paused.
//! * **Resume** a paused partition when its own queue is down to half a share and its outstanding
//!   messages to one share, whatever the other partitions hold, unless everything outstanding is at
//!   the bound. A rule on the whole buffer ("resume
//!   once it is down to half") let a reader a little slower than the broker keep one partition paused
//!   while the others, never at their share, kept the buffer over half: the paused one waited on
//!   partitions it had nothing to do with.
//!
//! # Guarantees
//!
//! * The buffer stays under twice `consume_size`: a partition that is not paused is at most one share
//!   plus what one batch brings, and a batch is at most `consume_size` minus what is buffered.
//! * A reader that never handles gets at most [`outstanding_bound`] messages, and a few more that
//!   polls at the bound bring for partitions not paused yet (the poll thread polls even then, to stay
//!   in the group): outstanding messages count against the bound as buffered ones do.
//! * Each pause moves at least half a share: a partition is resumed only after the reader took (and
//!   handled) that many of its messages, so pausing (which makes librdkafka drop its prefetch) does
//!   not flap.

use std::collections::BTreeSet;

/// What the buffer holds, as the poll thread sees it between two batches.
#[derive(Clone, Copy)]
pub(crate) struct Buffered<'a> {
    /// The bound the consumer was built with.
    pub consume_size: usize,
    /// Messages in the buffer, all partitions together.
    pub total: usize,
    /// Messages in the buffer for one partition.
    pub queued: &'a dyn Fn(i32) -> usize,
    /// Messages outstanding, all partitions together (see the module documentation).
    pub total_outstanding: usize,
    /// Messages outstanding for one partition.
    pub outstanding: &'a dyn Fn(i32) -> usize,
}

/// The most messages outstanding at once: the buffer, a batch in the reader's hands, and a margin
/// for the hoarding rule to act in. The poll thread sizes its batches to stay under it.
pub(crate) fn outstanding_bound(consume_size: usize) -> usize {
    3 * consume_size
}

/// The partitions to pause and to resume now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    pub pause: Vec<i32>,
    pub resume: Vec<i32>,
}

/// Applies the rule (see the module documentation) to the `assigned` partitions, of which `paused`
/// are paused.
pub(crate) fn decide(buffered: Buffered<'_>, assigned: &[i32], paused: &BTreeSet<i32>) -> Decision {
    if assigned.is_empty() {
        return Decision::default();
    }
    let share = (buffered.consume_size / assigned.len()).max(1);
    let full = buffered.total >= buffered.consume_size;
    let hoarding = buffered.total_outstanding >= 2 * buffered.consume_size;
    let at_bound = buffered.total_outstanding >= outstanding_bound(buffered.consume_size);
    let (queued, outstanding) = (buffered.queued, buffered.outstanding);
    let behind = |p: i32| full && queued(p) >= share;
    let hoarded = |p: i32| (hoarding && outstanding(p) >= 2 * share) || (at_bound && outstanding(p) > 0);
    Decision {
        pause: assigned
            .iter()
            .copied()
            .filter(|&p| !paused.contains(&p) && (behind(p) || hoarded(p)))
            .collect(),
        resume: assigned
            .iter()
            .copied()
            .filter(|&p| {
                paused.contains(&p) && !at_bound && queued(p) <= share / 2 && outstanding(p) <= share
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The decision for a buffer of `consume_size` holding `queues` (partition, messages), with
    /// `paused` paused and nothing held by the reader; every partition of `queues` is assigned.
    fn decide_for(consume_size: usize, queues: &[(i32, usize)], paused: &[i32]) -> Decision {
        let held: Vec<(i32, usize)> = queues.iter().map(|&(p, _)| (p, 0)).collect();
        decide_holding(consume_size, queues, &held, paused)
    }

    /// The same, the reader holding `held` (partition, messages) taken and not handled.
    fn decide_holding(
        consume_size: usize,
        queues: &[(i32, usize)],
        held: &[(i32, usize)],
        paused: &[i32],
    ) -> Decision {
        let lengths: BTreeMap<i32, usize> = queues.iter().copied().collect();
        let held: BTreeMap<i32, usize> = held.iter().copied().collect();
        let queued = |partition: i32| lengths.get(&partition).copied().unwrap_or(0);
        let outstanding = |partition: i32| queued(partition) + held.get(&partition).copied().unwrap_or(0);
        let assigned: Vec<i32> = lengths.keys().copied().collect();
        let buffered = Buffered {
            consume_size,
            total: lengths.values().sum(),
            queued: &queued,
            total_outstanding: assigned.iter().map(|&p| outstanding(p)).sum(),
            outstanding: &outstanding,
        };
        decide(buffered, &assigned, &paused.iter().copied().collect())
    }

    #[test]
    fn a_reader_holding_two_buffers_worth_unhandled_pauses_the_partitions_it_holds_with_an_empty_buffer() {
        // The buffer is empty (the reader takes at once), but it handles nothing: 600 outstanding.
        let decision = decide_holding(300, &[(0, 0), (1, 0), (2, 0)], &[(0, 400), (1, 200), (2, 0)], &[]);
        assert_eq!(decision.pause, vec![0, 1]);
    }

    #[test]
    fn a_reader_holding_one_batch_is_not_hoarding() {
        // One full batch in the reader's hands (being written, say) and a full buffer's worth in all:
        // under the hoarding bound, and the buffer has room.
        let decision = decide_holding(
            300,
            &[(0, 50), (1, 50), (2, 50)],
            &[(0, 150), (1, 150), (2, 0)],
            &[],
        );
        assert_eq!(decision, Decision::default());
    }

    #[test]
    fn at_the_bound_every_partition_with_anything_outstanding_is_paused_and_none_resumes() {
        // 900 outstanding: partition 2 holds less than two shares, but the bound is reached.
        let decision = decide_holding(
            300,
            &[(0, 0), (1, 0), (2, 0), (3, 0)],
            &[(0, 500), (1, 0), (2, 150), (3, 250)],
            &[1],
        );
        assert_eq!(decision.pause, vec![0, 2, 3]);
        assert!(
            decision.resume.is_empty(),
            "partition 1 holds nothing, but the bound is reached"
        );
    }

    #[test]
    fn a_hoarded_partition_resumes_only_once_the_reader_handled_down_to_a_share() {
        let still_held = decide_holding(300, &[(0, 0), (1, 0), (2, 0)], &[(0, 101), (1, 0), (2, 0)], &[0]);
        assert_eq!(still_held, Decision::default());
        let handled = decide_holding(300, &[(0, 0), (1, 0), (2, 0)], &[(0, 100), (1, 0), (2, 0)], &[0]);
        assert_eq!(handled.resume, vec![0]);
    }

    #[test]
    fn nothing_is_paused_while_the_buffer_has_room() {
        // Partition 0 is far over its share (100), but the buffer is not full.
        let decision = decide_for(300, &[(0, 250), (1, 10), (2, 0)], &[]);
        assert_eq!(decision, Decision::default());
    }

    #[test]
    fn a_full_buffer_pauses_the_partitions_at_or_over_their_share_only() {
        let decision = decide_for(300, &[(0, 150), (1, 100), (2, 50)], &[]);
        assert_eq!(decision.pause, vec![0, 1]);
        assert!(decision.resume.is_empty());
    }

    #[test]
    fn a_paused_partition_resumes_when_its_own_queue_drained_while_the_others_keep_the_buffer_full() {
        // Partition 0 is down to half its share; 1 and 2, flowing just under their share, keep the
        // buffer over half (a rule on the whole buffer kept 0 paused here).
        let decision = decide_for(300, &[(0, 50), (1, 99), (2, 99)], &[0]);
        assert_eq!(decision.resume, vec![0]);
        assert!(decision.pause.is_empty());
    }

    #[test]
    fn a_paused_partition_stays_paused_until_the_reader_took_half_a_share_of_it() {
        let decision = decide_for(300, &[(0, 51), (1, 0), (2, 0)], &[0]);
        assert_eq!(decision, Decision::default());
    }

    #[test]
    fn a_partition_already_paused_is_not_paused_again() {
        let decision = decide_for(300, &[(0, 200), (1, 100), (2, 0)], &[0]);
        assert_eq!(decision.pause, vec![1]);
    }

    #[test]
    fn the_share_is_at_least_one_message() {
        // More partitions than the buffer holds messages: a share of 0 would pause empty partitions.
        let decision = decide_for(2, &[(0, 1), (1, 1), (2, 0)], &[]);
        assert_eq!(decision.pause, vec![0, 1]);
    }

    #[test]
    fn no_partitions_no_decision() {
        assert_eq!(decide_for(300, &[], &[]), Decision::default());
    }
}
