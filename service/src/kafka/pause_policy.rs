//! When the poll thread pauses a partition, and when it resumes it: a pure function of what the
//! delivery buffer holds, so that the rule can be read and tested apart from librdkafka.
//!
//! The rule, with `share = consume_size / assigned partitions` (at least 1):
//!
//! * **Pause** a partition when the buffer is full (`consume_size` messages or more, after the reader's
//!   grace) and the partition holds at least its share of it. A full buffer always has one: the
//!   partitions with a backlog stop, the others may still fill up to their share, so none is kept out.
//! * **Resume** a paused partition when its own queue is down to half a share, whatever the other
//!   partitions hold. A rule on the whole buffer ("resume once it is down to half") let a reader a
//!   little slower than the broker keep one partition paused while the others, never at their share,
//!   kept the buffer over half: the paused one waited on partitions it had nothing to do with.
//!
//! # Guarantees
//!
//! * The buffer stays under twice `consume_size`: a partition that is not paused is at most one share
//!   plus what one batch brings, and a batch is at most `consume_size` minus what is buffered.
//! * Each pause moves at least half a share: a partition is resumed only after the reader took that
//!   many of its messages, so pausing (which makes librdkafka drop its prefetch) does not flap.

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
    let queued = buffered.queued;
    Decision {
        pause: assigned
            .iter()
            .copied()
            .filter(|p| full && !paused.contains(p) && queued(*p) >= share)
            .collect(),
        resume: assigned
            .iter()
            .copied()
            .filter(|p| paused.contains(p) && queued(*p) <= share / 2)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The decision for a buffer of `consume_size` holding `queues` (partition, messages), with
    /// `paused` paused; every partition of `queues` is assigned.
    fn decide_for(consume_size: usize, queues: &[(i32, usize)], paused: &[i32]) -> Decision {
        let lengths: BTreeMap<i32, usize> = queues.iter().copied().collect();
        let queued = |partition: i32| lengths.get(&partition).copied().unwrap_or(0);
        let assigned: Vec<i32> = lengths.keys().copied().collect();
        let buffered = Buffered {
            consume_size,
            total: lengths.values().sum(),
            queued: &queued,
        };
        decide(buffered, &assigned, &paused.iter().copied().collect())
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
