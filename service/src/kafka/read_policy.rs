//! How much the poll thread reads in a turn, and from which partitions: a pure function of what the
//! delivery buffer holds and of what the reader holds unhandled, so that the rule can be read and
//! tested apart from librdkafka.
//!
//! Each partition has a queue of its own in librdkafka (`fetch_queues`), so back-pressure needs no
//! pausing: what the poll thread does not read stays in librdkafka's prefetch queue (bounded by its
//! `queued.max.messages.kbytes`), and librdkafka stops fetching a partition whose queue is full. (This
//! replaced pausing partitions, which made librdkafka drop what it had prefetched and fetch it again
//! after the fetch in flight, up to `fetch.wait.max.ms` later: with three backlogs and a reader a
//! little slower than the broker, a partition waited through 1,189 deliveries of the others.)
//!
//! Two counts per partition: *queued*, its messages in the buffer; *outstanding*, its messages not yet
//! behind the stored offset (queued, taken by the reader and not handled, or handled behind one that
//! is not). With `share = consume_size / assigned partitions` (at least 1):
//!
//! * **Room.** A turn reads at most what keeps the buffer at `consume_size`, and everything
//!   outstanding under [`outstanding_bound`] (three times `consume_size`: the buffer, a batch in the
//!   reader's hands, and a margin for the next rule to act in). A slow reader leaves no room, and
//!   nothing is read until it has taken the buffer down to half ([`low_water`]): read as soon as there
//!   was room for one, the poll thread would refill a full buffer one message a turn, each turn costing
//!   what a batch does (measured in a variant where the reader was the slower side: 12-partition drains
//!   went from 0.77–0.89 to 0.89–1.12 million messages/s with this rule).
//! * **Hoarding.** When everything outstanding reaches twice `consume_size`, the partitions with two
//!   shares or more of it are not read: the reader takes their messages and does not handle them. One
//!   message held freezes its partition's commits, and taking from the buffer would let it hold
//!   without bound; the other partitions go on.
//! * **Fair shares.** The room of a turn is split among the partitions read, each up to an equal part
//!   of what is left when its turn comes, starting one partition further each turn (`poll_loop`).
//!
//! # Guarantees
//!
//! * The buffer holds at most `consume_size` messages (and one more that a poll of the main queue may
//!   bring, for a partition whose queue could not be split off).
//! * A reader that never handles gets at most [`outstanding_bound`] messages.
//! * A partition is held back only for what it holds itself: a hoarded partition stops, the others
//!   are read as long as there is room.

/// What the consumer holds, as the poll thread sees it between two turns.
#[derive(Clone, Copy)]
pub(crate) struct Load<'a> {
    /// The bound the consumer was built with.
    pub consume_size: usize,
    /// Messages in the buffer, all partitions together.
    pub buffered: usize,
    /// Messages outstanding, all partitions together (see the module documentation).
    pub total_outstanding: usize,
    /// Messages outstanding for one partition.
    pub outstanding: &'a dyn Fn(i32) -> usize,
}

/// The most messages outstanding at once.
pub(crate) fn outstanding_bound(consume_size: usize) -> usize {
    3 * consume_size
}

/// While the buffer holds more than this, a turn reads nothing: the reader is ahead of nothing.
pub(crate) fn low_water(consume_size: usize) -> usize {
    consume_size / 2
}

/// What a turn may read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Messages, all partitions together.
    pub room: usize,
    /// The partitions to read, of the assigned ones; the others are held back.
    pub read: Vec<i32>,
}

/// Applies the rule (see the module documentation) to the `assigned` partitions.
pub(crate) fn plan(load: Load<'_>, assigned: &[i32]) -> Plan {
    if assigned.is_empty() {
        return Plan::default();
    }
    let room = if load.buffered > low_water(load.consume_size) {
        0
    } else {
        load.consume_size
            .saturating_sub(load.buffered)
            .min(outstanding_bound(load.consume_size).saturating_sub(load.total_outstanding))
    };
    let share = (load.consume_size / assigned.len()).max(1);
    let hoarding = load.total_outstanding >= 2 * load.consume_size;
    let hoarded = |p: i32| hoarding && (load.outstanding)(p) >= 2 * share;
    Plan {
        room,
        read: assigned.iter().copied().filter(|&p| !hoarded(p)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The plan for `consume_size` with `buffered` messages in the buffer and `outstanding`
    /// (partition, messages) outstanding; every partition of `outstanding` is assigned.
    fn plan_for(consume_size: usize, buffered: usize, outstanding: &[(i32, usize)]) -> Plan {
        let outstanding: BTreeMap<i32, usize> = outstanding.iter().copied().collect();
        let of = |partition: i32| outstanding.get(&partition).copied().unwrap_or(0);
        let assigned: Vec<i32> = outstanding.keys().copied().collect();
        let load = Load {
            consume_size,
            buffered,
            total_outstanding: outstanding.values().sum(),
            outstanding: &of,
        };
        plan(load, &assigned)
    }

    #[test]
    fn a_turn_reads_what_the_buffer_has_room_for_from_every_partition() {
        let plan = plan_for(300, 120, &[(0, 100), (1, 20), (2, 0)]);
        assert_eq!(
            plan,
            Plan {
                room: 180,
                read: vec![0, 1, 2]
            }
        );
    }

    #[test]
    fn a_buffer_over_half_full_leaves_no_room_until_the_reader_took_it_down_to_half() {
        assert_eq!(plan_for(300, 300, &[(0, 300), (1, 0)]).room, 0);
        assert_eq!(plan_for(300, 151, &[(0, 151), (1, 0)]).room, 0, "one over half");
        assert_eq!(plan_for(300, 150, &[(0, 150), (1, 0)]).room, 150, "half");
    }

    #[test]
    fn the_room_stops_at_the_outstanding_bound() {
        // An empty buffer, but 800 taken and not handled: 100 more at most.
        let plan = plan_for(300, 0, &[(0, 300), (1, 250), (2, 250)]);
        assert_eq!(plan.room, 100);
        let at_bound = plan_for(300, 0, &[(0, 300), (1, 300), (2, 300)]);
        assert_eq!(at_bound.room, 0);
    }

    #[test]
    fn a_reader_holding_two_buffers_worth_unhandled_stops_the_partitions_it_holds() {
        // The buffer is empty (the reader takes at once), but it handles nothing: 600 outstanding.
        let plan = plan_for(300, 0, &[(0, 400), (1, 200), (2, 0)]);
        assert_eq!(plan.read, vec![2], "0 and 1 hold two shares (200) each or more");
        assert_eq!(plan.room, 300);
    }

    #[test]
    fn a_reader_holding_one_batch_is_not_hoarding() {
        // One batch in the reader's hands and a full buffer's worth in all: under twice consume_size.
        let plan = plan_for(300, 150, &[(0, 200), (1, 200), (2, 0)]);
        assert_eq!(plan.read, vec![0, 1, 2]);
    }

    #[test]
    fn the_share_is_at_least_one_message() {
        // More partitions than the buffer holds messages: a share of 0 would hold back idle ones.
        let plan = plan_for(2, 0, &[(0, 2), (1, 2), (2, 0)]);
        assert_eq!(plan.read, vec![2]);
    }

    #[test]
    fn no_partitions_nothing_to_read() {
        assert_eq!(plan_for(300, 0, &[]), Plan::default());
    }
}
