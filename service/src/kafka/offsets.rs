//! Which offset may be stored for each partition: the contiguous-prefix rule behind `handle()`.
//!
//! librdkafka commits the offset it has *stored* for a partition, meaning "everything before this was
//! processed". With out-of-order handling, storing a handled message's offset + 1 would claim the
//! unhandled messages before it too, and a crash would lose them. So, per partition, the
//! [`OffsetTracker`] keeps the messages delivered in the current assignment in delivery order, marks
//! them as they are handled, and advances the offset to store only past a *contiguous* run of handled
//! messages at the front: the stored offset is the offset + 1 of the last message of that run.
//!
//! Contiguous means contiguous in the sequence of delivered messages, not in offset arithmetic: offsets
//! have gaps (compacted records, transaction markers), so "the next offset" is whatever was delivered
//! next.
//!
//! Each assignment of a partition gets a fresh [`Epoch`]. A message remembers the epoch it was delivered
//! in, and an acknowledgement from an older epoch (the partition was revoked, maybe reassigned since) is
//! ignored: storing it would fail (librdkafka answers `__STATE` for partitions not assigned) or, worse,
//! succeed for a later assignment whose messages it says nothing about.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::acknowledgement::Handled;

/// Identifies one assignment of one partition to this consumer; grows with every (re)assignment.
pub type Epoch = u64;

/// One delivered message not yet covered by the stored offset.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    offset: i64,
    handled: bool,
    /// When the poll thread received it (the time of its batch).
    received_at: Instant,
}

/// The message delivered longest ago and not handled yet: it holds back its partition's commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unhandled {
    pub partition: i32,
    pub offset: i64,
    pub received_at: Instant,
}

/// The bookkeeping of one assigned partition.
#[derive(Debug)]
struct PartitionProgress {
    epoch: Epoch,
    /// Delivered in this epoch and not yet covered by `stored`, in delivery (so offset) order.
    in_flight: VecDeque<InFlight>,
    /// The offset to store: one past the last message of the handled prefix.
    stored: Option<i64>,
    /// `stored` changed since it was last given to librdkafka.
    store_pending: bool,
    /// The last offset this consumer committed for the partition in this epoch.
    committed: Option<i64>,
}

/// The per-partition offset bookkeeping of one consumer. Owned by the poll thread.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    last_epoch: Epoch,
    /// Grows with every assignment and revocation: equal at two times, the same partitions were
    /// assigned in the same epochs between them.
    changes: u64,
    partitions: BTreeMap<i32, PartitionProgress>,
}

impl OffsetTracker {
    /// The partition was assigned: start a new epoch with nothing delivered.
    pub fn assign(&mut self, partition: i32) -> Epoch {
        self.last_epoch += 1;
        self.changes += 1;
        let epoch = self.last_epoch;
        self.partitions.insert(
            partition,
            PartitionProgress {
                epoch,
                in_flight: VecDeque::new(),
                stored: None,
                store_pending: false,
                committed: None,
            },
        );
        epoch
    }

    /// The partition was revoked (or lost): forget it; later acknowledgements for it are ignored.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.changes += 1;
    }

    pub fn revoke_all(&mut self) {
        self.partitions.clear();
        self.changes += 1;
    }

    /// See [`changes`](Self::changes): compare two readings to know whether any message delivered
    /// between them may belong to an assignment that is gone.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn assigned(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// The partition's current epoch, if it is assigned.
    #[cfg(test)]
    pub fn epoch(&self, partition: i32) -> Option<Epoch> {
        self.partitions.get(&partition).map(|p| p.epoch)
    }

    pub fn is_current(&self, partition: i32, epoch: Epoch) -> bool {
        self.partitions.get(&partition).is_some_and(|p| p.epoch == epoch)
    }

    /// A message was received from librdkafka at `received_at`. Returns its epoch, or `None` if the
    /// partition is not assigned (the message is then dropped: its partition's new owner reads it).
    pub fn deliver(&mut self, partition: i32, offset: i64, received_at: Instant) -> Option<Epoch> {
        let message = InFlight {
            offset,
            handled: false,
            received_at,
        };
        let progress = self.partitions.get_mut(&partition)?;
        let last_seen = progress
            .in_flight
            .back()
            .map(|m| m.offset + 1)
            .or(progress.stored);
        if last_seen.is_none_or(|next| offset >= next) {
            // The common case, with one lookup: a message per call, hundreds of thousands a second.
            progress.in_flight.push_back(message);
            return Some(progress.epoch);
        }
        // librdkafka moved the position backwards (an offset reset, a seek). The messages delivered
        // since are no longer a prefix of what comes, so start afresh as if newly assigned; the
        // acknowledgements of the old epoch are ignored and their messages come again.
        let committed = progress.committed;
        self.assign(partition);
        let progress = self.partitions.get_mut(&partition)?;
        progress.committed = committed;
        progress.in_flight.push_back(message);
        Some(progress.epoch)
    }

    /// A message was handled: advance the stored offset over the handled prefix, if it grew.
    pub fn handle(&mut self, handled: Handled) {
        let Some(progress) = self.partitions.get_mut(&handled.partition) else {
            return;
        };
        if progress.epoch != handled.epoch {
            return;
        }
        let Some(index) = position(&progress.in_flight, handled.offset) else {
            return; // Already covered by the stored offset: acknowledged twice.
        };
        progress.in_flight[index].handled = true;
        let mut advanced_to = None;
        while let Some(front) = progress.in_flight.front().filter(|m| m.handled) {
            advanced_to = Some(front.offset + 1);
            progress.in_flight.pop_front();
        }
        if let Some(next) = advanced_to {
            progress.stored = Some(next);
            progress.store_pending = true;
        }
    }

    /// The stored offsets that changed since last asked: what to hand to librdkafka's offset store.
    pub fn take_offsets_to_store(&mut self) -> Vec<(i32, i64)> {
        self.partitions
            .iter_mut()
            .filter(|(_, p)| p.store_pending)
            .filter_map(|(&partition, progress)| {
                progress.store_pending = false;
                progress.stored.map(|offset| (partition, offset))
            })
            .collect()
    }

    /// The stored offsets of `partitions` (all assigned ones for `None`) not yet committed by us.
    pub fn offsets_to_commit(&self, partitions: Option<&[i32]>) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter(|(partition, _)| partitions.is_none_or(|wanted| wanted.contains(partition)))
            .filter_map(|(&partition, progress)| match progress.stored {
                Some(offset) if progress.committed != Some(offset) => Some((partition, offset)),
                _ => None,
            })
            .collect()
    }

    /// Messages of `partition` not yet behind its stored offset: buffered, taken and not handled, or
    /// handled behind one that is not (what the hoarding bound counts: `read_policy`).
    pub fn outstanding(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map_or(0, |p| p.in_flight.len())
    }

    /// [`outstanding`](Self::outstanding), all partitions together.
    pub fn total_outstanding(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Messages delivered in the current assignments and not handled yet.
    pub fn unhandled(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.in_flight.iter().filter(|m| !m.handled).count())
            .sum()
    }

    /// The unhandled message received longest ago, over all partitions. Within a partition it is the
    /// first of the handled prefix's gap, since messages arrive in offset order.
    pub fn oldest_unhandled(&self) -> Option<Unhandled> {
        self.partitions
            .iter()
            .filter_map(|(&partition, progress)| {
                let message = progress.in_flight.iter().find(|m| !m.handled)?;
                Some(Unhandled {
                    partition,
                    offset: message.offset,
                    received_at: message.received_at,
                })
            })
            .min_by_key(|unhandled| unhandled.received_at)
    }

    pub fn mark_committed(&mut self, offsets: &[(i32, i64)]) {
        for &(partition, offset) in offsets {
            if let Some(progress) = self.partitions.get_mut(&partition) {
                progress.committed = Some(offset);
            }
        }
    }
}

/// Where the message at `offset` is in `in_flight`. Offsets in flight are increasing, and without gaps
/// (compaction, transaction markers) they are consecutive: then the message is `offset - first` places
/// in, found at once; otherwise a binary search finds it. (A search for every acknowledgement was 7.6%
/// of the poll thread's time in a 12-partition drain.)
fn position(in_flight: &VecDeque<InFlight>, offset: i64) -> Option<usize> {
    let first = in_flight.front()?.offset;
    let guess = usize::try_from(offset.checked_sub(first)?).ok()?;
    if in_flight.get(guess).is_some_and(|m| m.offset == offset) {
        return Some(guess);
    }
    in_flight.binary_search_by_key(&offset, |m| m.offset).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handled(partition: i32, offset: i64, epoch: Epoch) -> Handled {
        Handled {
            partition,
            offset,
            epoch,
        }
    }

    fn deliver_all(tracker: &mut OffsetTracker, partition: i32, offsets: &[i64]) -> Epoch {
        let mut epoch = 0;
        for &offset in offsets {
            epoch = tracker
                .deliver(partition, offset, Instant::now())
                .unwrap_or_default();
        }
        epoch
    }

    #[test]
    fn stores_nothing_until_the_first_message_is_handled() {
        let mut tracker = OffsetTracker::default();
        let epoch = tracker.assign(0);
        deliver_all(&mut tracker, 0, &[10, 11, 12]);
        tracker.handle(handled(0, 12, epoch));
        tracker.handle(handled(0, 11, epoch));
        assert_eq!(tracker.take_offsets_to_store(), vec![]);
        tracker.handle(handled(0, 10, epoch));
        assert_eq!(tracker.take_offsets_to_store(), vec![(0, 13)]);
        assert_eq!(
            tracker.take_offsets_to_store(),
            vec![],
            "each store is handed out once"
        );
    }

    #[test]
    fn never_stores_past_an_unhandled_message() {
        let mut tracker = OffsetTracker::default();
        let epoch = tracker.assign(0);
        deliver_all(&mut tracker, 0, &[0, 1, 2, 3, 4]);
        for offset in [0, 1, 3, 4] {
            tracker.handle(handled(0, offset, epoch));
        }
        assert_eq!(tracker.take_offsets_to_store(), vec![(0, 2)]);
        tracker.handle(handled(0, 2, epoch));
        assert_eq!(tracker.take_offsets_to_store(), vec![(0, 5)]);
    }

    #[test]
    fn a_message_in_flight_is_found_with_and_without_gaps_before_it() {
        let now = Instant::now();
        let in_flight: VecDeque<InFlight> = [10, 11, 12, 15, 16, 20]
            .into_iter()
            .map(|offset| InFlight {
                offset,
                handled: false,
                received_at: now,
            })
            .collect();
        let found: Vec<Option<usize>> = [10, 12, 15, 16, 20, 9, 13, 21, 17]
            .into_iter()
            .map(|offset| position(&in_flight, offset))
            .collect();
        assert_eq!(
            found,
            [
                Some(0),
                Some(2),
                Some(3),
                Some(4),
                Some(5),
                None,
                None,
                None,
                None
            ]
        );
        assert_eq!(position(&VecDeque::new(), 0), None);
    }

    #[test]
    fn offset_gaps_do_not_stall_progress() {
        // Transaction markers and compaction leave holes: 2, 5 and 6 are never delivered.
        let mut tracker = OffsetTracker::default();
        let epoch = tracker.assign(3);
        deliver_all(&mut tracker, 3, &[0, 1, 3, 4, 7]);
        for offset in [7, 4, 3, 1, 0] {
            tracker.handle(handled(3, offset, epoch));
        }
        assert_eq!(tracker.take_offsets_to_store(), vec![(3, 8)]);
    }

    #[test]
    fn acknowledgements_of_an_earlier_assignment_are_ignored() {
        let mut tracker = OffsetTracker::default();
        let old = tracker.assign(0);
        deliver_all(&mut tracker, 0, &[0, 1]);
        tracker.revoke(0);
        tracker.handle(handled(0, 0, old));
        let new = tracker.assign(0);
        assert_ne!(old, new);
        deliver_all(&mut tracker, 0, &[0, 1]);
        tracker.handle(handled(0, 0, old));
        tracker.handle(handled(0, 1, old));
        assert_eq!(tracker.take_offsets_to_store(), vec![]);
        tracker.handle(handled(0, 0, new));
        assert_eq!(tracker.take_offsets_to_store(), vec![(0, 1)]);
        assert!(
            tracker.deliver(1, 0, Instant::now()).is_none(),
            "partition 1 is not assigned"
        );
    }

    #[test]
    fn after_a_rebalance_error_nothing_is_assigned_and_old_acknowledgements_store_nothing() {
        // librdkafka unassigns everything after a rebalance error.
        let mut tracker = OffsetTracker::default();
        let e0 = tracker.assign(0);
        let e1 = tracker.assign(1);
        deliver_all(&mut tracker, 0, &[0]);
        deliver_all(&mut tracker, 1, &[0]);
        tracker.revoke_all();
        tracker.handle(handled(0, 0, e0));
        tracker.handle(handled(1, 0, e1));
        assert_eq!(tracker.take_offsets_to_store(), vec![]);
        assert_eq!(tracker.assigned().count(), 0);
        assert!(
            tracker.deliver(0, 1, Instant::now()).is_none(),
            "partition 0 is not assigned"
        );
    }

    #[test]
    fn partitions_progress_independently_and_double_acks_are_harmless() {
        let mut tracker = OffsetTracker::default();
        let e0 = tracker.assign(0);
        let e1 = tracker.assign(1);
        deliver_all(&mut tracker, 0, &[5, 6]);
        deliver_all(&mut tracker, 1, &[9]);
        tracker.handle(handled(1, 9, e1));
        tracker.handle(handled(1, 9, e1));
        tracker.handle(handled(0, 6, e0));
        assert_eq!(tracker.take_offsets_to_store(), vec![(1, 10)]);
    }

    #[test]
    fn a_position_moving_back_starts_a_new_epoch() {
        let mut tracker = OffsetTracker::default();
        let first = tracker.assign(0);
        deliver_all(&mut tracker, 0, &[4, 5, 6]);
        tracker.handle(handled(0, 4, first));
        let second = tracker.deliver(0, 5, Instant::now()).unwrap_or_default();
        assert_ne!(first, second);
        tracker.handle(handled(0, 5, first));
        assert_eq!(
            tracker.take_offsets_to_store(),
            vec![],
            "the stored 5 went with the old epoch"
        );
        tracker.handle(handled(0, 5, second));
        assert_eq!(tracker.take_offsets_to_store(), vec![(0, 6)]);
    }

    #[test]
    fn the_last_offset_delivered_again_is_a_move_back() {
        let mut tracker = OffsetTracker::default();
        let first = tracker.assign(0);
        deliver_all(&mut tracker, 0, &[7]);
        let second = tracker.deliver(0, 7, Instant::now()).unwrap_or_default();
        assert_ne!(first, second, "7 again: librdkafka went back to it");
        assert_eq!(
            tracker.deliver(0, 8, Instant::now()),
            Some(second),
            "8 follows in the same epoch"
        );
    }

    #[test]
    fn commits_only_what_changed() {
        let mut tracker = OffsetTracker::default();
        let e0 = tracker.assign(0);
        let e1 = tracker.assign(1);
        deliver_all(&mut tracker, 0, &[0]);
        deliver_all(&mut tracker, 1, &[0]);
        tracker.handle(handled(0, 0, e0));
        tracker.handle(handled(1, 0, e1));
        assert_eq!(tracker.offsets_to_commit(Some(&[1])), vec![(1, 1)]);
        assert_eq!(tracker.offsets_to_commit(None), vec![(0, 1), (1, 1)]);
        tracker.mark_committed(&[(0, 1)]);
        assert_eq!(tracker.offsets_to_commit(None), vec![(1, 1)]);
    }

    #[test]
    fn the_oldest_unhandled_message_is_the_one_received_first_and_not_handled() {
        let mut tracker = OffsetTracker::default();
        let (zero, one) = (tracker.assign(0), tracker.assign(1));
        let start = Instant::now();
        let later = start + std::time::Duration::from_secs(1);
        tracker.deliver(0, 10, later);
        tracker.deliver(1, 20, start);
        tracker.deliver(1, 21, later);
        assert_eq!(tracker.unhandled(), 3);
        let oldest = |tracker: &OffsetTracker| tracker.oldest_unhandled().map(|u| (u.partition, u.offset));
        assert_eq!(oldest(&tracker), Some((1, 20)));

        tracker.handle(handled(1, 21, one)); // out of order: 20 still holds the partition back
        assert_eq!(tracker.unhandled(), 2);
        assert_eq!(oldest(&tracker), Some((1, 20)));
        tracker.handle(handled(1, 20, one));
        assert_eq!(oldest(&tracker), Some((0, 10)));
        tracker.handle(handled(0, 10, zero));
        assert_eq!((tracker.unhandled(), oldest(&tracker)), (0, None));
    }
}
