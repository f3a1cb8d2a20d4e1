//! What `handle()`, `commit()` and `close()` send to the poll thread.
//!
//! The poll thread owns the librdkafka consumer and the per-partition offset bookkeeping; nothing else
//! touches them. `commit()` and `close()` reach it through a channel of [`Request`]s. `handle()` sets
//! its message's bit in a bitmap its batch shares with the poll thread ([`BatchShared`]); the poll
//! thread keeps, for each batch with messages not yet seen handled, which message each bit stands for
//! ([`Acknowledgements`]), and collects the bits set since it last looked. It reads the channel first
//! and the bitmaps after, so every `handle()` that returned before a `commit()` (or a `close()`) is
//! applied before it: the request's arrival through the channel makes what its sender did before
//! visible.
//!
//! Why bits: a message costs the reader one atomic `OR`, with no lock and no allocation, and the poll
//! thread a few word reads per batch a turn. The two earlier designs cost more: a channel send per
//! message, then a push under a lock per message (a tenth of the reader's time in a 12-partition
//! drain, docs/BENCHMARKS.md section 1).
//!
//! Neither side blocks, so `handle()` is cheap and safe to call from async code. The bitmaps are read
//! on every turn of the poll loop (at least every 100 ms) and inside the rebalance callback, before
//! revoked partitions are committed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::error::ConsumerError;
use super::offsets::Epoch;

/// A request to the poll thread.
#[derive(Debug)]
pub(crate) enum Request {
    /// Store and commit everything handled so far, then answer.
    Commit(oneshot::Sender<Result<(), ConsumerError>>),
    /// Commit everything handled, leave the group, stop; then answer.
    Close(oneshot::Sender<Result<(), ConsumerError>>),
}

/// One handled message, named by its partition, its offset and the assignment it was delivered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handled {
    pub partition: i32,
    pub offset: i64,
    pub epoch: Epoch,
}

/// What the messages of one batch share: a bit each, set when handled, and the topic they came from.
///
/// One reference count per batch, not one per message: the poll thread takes the references and the
/// reader drops them, on two cores at once. Counters touched per message by both (a `Sender` clone and
/// an `Arc<str>` clone in every message) would bounce their cache lines between the cores hundreds of
/// thousands of times a second; a batch's own counter is touched by one side at a time.
#[derive(Debug)]
pub(crate) struct BatchShared {
    topic: Arc<str>,
    handled: Box<[AtomicU64]>,
}

/// The token a delivered message carries to acknowledge itself: its batch and its place in it.
///
/// Acknowledging twice is harmless (the bit is set already), and so is acknowledging after the
/// partition was revoked: the epoch no longer matches, and the new owner of the partition re-reads the
/// message.
#[derive(Debug, Clone)]
pub(crate) struct Acknowledgement {
    batch: Arc<BatchShared>,
    index: usize,
    epoch: Epoch,
}

impl Acknowledgement {
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The topic of the message.
    pub fn topic(&self) -> &str {
        &self.batch.topic
    }

    /// Once the consumer is closed nothing reads the bits: the message is then re-read by whoever
    /// consumes the partition next. `Release`: the poll thread that sees the bit sees what the reader
    /// did before.
    pub fn acknowledge(&self) {
        let (word, bit) = (self.index / 64, self.index % 64);
        self.batch.handled[word].fetch_or(1 << bit, Ordering::Release);
    }
}

/// The poll thread's side: the batches with messages not yet seen handled, and what each bit means.
#[derive(Debug)]
pub(crate) struct Acknowledgements {
    topic: Arc<str>,
    /// Oldest first; the last is the one being filled.
    batches: VecDeque<Tracked>,
}

#[derive(Debug)]
struct Tracked {
    shared: Arc<BatchShared>,
    /// Message `i` of the batch is bit `i`.
    messages: Vec<Handled>,
    /// The bits seen set so far.
    seen: Vec<u64>,
    /// Messages not seen handled yet.
    left: usize,
}

impl Acknowledgements {
    pub fn new(topic: Arc<str>) -> Self {
        Self {
            topic,
            batches: VecDeque::new(),
        }
    }

    /// Makes room for `count` more messages: a new batch of that size, unless the one being filled
    /// has room left (a turn that reads nothing allocates nothing).
    pub fn reserve(&mut self, count: usize) {
        let room = |batch: &Tracked| batch.messages.capacity() - batch.messages.len();
        if self.batches.back().is_none_or(|batch| room(batch) < count) {
            self.start_batch(count);
        }
    }

    /// Starts a batch of up to `capacity` messages: [`track`](Self::track) fills it, and starts another
    /// when it is full.
    fn start_batch(&mut self, capacity: usize) {
        let capacity = capacity.max(1);
        let words = capacity.div_ceil(64);
        self.batches.push_back(Tracked {
            shared: Arc::new(BatchShared {
                topic: self.topic.clone(),
                handled: (0..words).map(|_| AtomicU64::new(0)).collect(),
            }),
            messages: Vec::with_capacity(capacity),
            seen: vec![0; words],
            left: 0,
        });
    }

    /// The acknowledgement of a message about to be handed out, in the batch being filled.
    pub fn track(&mut self, handled: Handled) -> Acknowledgement {
        let full = |batch: &Tracked| batch.messages.len() == batch.messages.capacity();
        if self.batches.back().is_none_or(full) {
            let capacity = self.batches.back().map_or(64, |batch| batch.messages.capacity());
            self.start_batch(capacity);
        }
        let batch = self
            .batches
            .back_mut()
            .expect("a batch with room was just made if there was none");
        batch.messages.push(handled);
        batch.left += 1;
        Acknowledgement {
            batch: batch.shared.clone(),
            index: batch.messages.len() - 1,
            epoch: handled.epoch,
        }
    }

    /// Hands each message handled since the last call to `apply`, in batch order, and forgets the
    /// batches all of whose messages it has seen (but the one being filled).
    pub fn collect(&mut self, mut apply: impl FnMut(Handled)) {
        for batch in &mut self.batches {
            if batch.left == 0 {
                continue;
            }
            for (word, (bits, seen)) in batch.shared.handled.iter().zip(&mut batch.seen).enumerate() {
                let new = bits.load(Ordering::Acquire) & !*seen;
                if new == 0 {
                    continue;
                }
                *seen |= new;
                let mut rest = new;
                while rest != 0 {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    apply(batch.messages[word * 64 + bit]);
                    batch.left -= 1;
                }
            }
        }
        self.retire();
    }

    /// Forgets the messages `stale` says no acknowledgement can matter for any more (their partition
    /// was revoked, or moved back to an earlier position), so that a batch holding only those goes.
    pub fn forget(&mut self, stale: impl Fn(&Handled) -> bool) {
        for batch in &mut self.batches {
            for (index, handled) in batch.messages.iter().enumerate() {
                let (word, bit) = (index / 64, 1 << (index % 64));
                if batch.seen[word] & bit == 0 && stale(handled) {
                    batch.seen[word] |= bit;
                    batch.left -= 1;
                }
            }
        }
        self.retire();
    }

    /// Drops the batches with nothing left to see, but the newest, which may still be filled.
    fn retire(&mut self) {
        let newest = self.batches.len().saturating_sub(1);
        let mut index = 0;
        self.batches.retain(|batch| {
            let keep = batch.left > 0 || index == newest;
            index += 1;
            keep
        });
    }

    /// Batches kept: for tests.
    #[cfg(test)]
    fn batches(&self) -> usize {
        self.batches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handled(partition: i32, offset: i64) -> Handled {
        Handled {
            partition,
            offset,
            epoch: 1,
        }
    }

    fn collected(acks: &mut Acknowledgements) -> Vec<(i32, i64)> {
        let mut seen = Vec::new();
        acks.collect(|h| seen.push((h.partition, h.offset)));
        seen
    }

    #[test]
    fn each_handled_message_is_collected_once_whatever_the_order() {
        let mut acks = Acknowledgements::new("t".into());
        acks.start_batch(100);
        let tokens: Vec<Acknowledgement> = (0..100)
            .map(|offset| acks.track(handled(offset as i32 % 3, offset)))
            .collect();
        assert!(collected(&mut acks).is_empty());
        for index in [70, 3, 64, 63, 0] {
            tokens[index].acknowledge();
        }
        tokens[3].acknowledge(); // twice
        let mut seen = collected(&mut acks);
        seen.sort();
        assert_eq!(seen, [(0, 0), (0, 3), (0, 63), (1, 64), (1, 70)]);
        assert!(collected(&mut acks).is_empty(), "nothing new");
        assert_eq!(tokens[64].topic(), "t");
    }

    #[test]
    fn a_full_batch_starts_another_and_finished_batches_are_forgotten() {
        let mut acks = Acknowledgements::new("t".into());
        acks.start_batch(2);
        let tokens: Vec<Acknowledgement> = (0..5).map(|offset| acks.track(handled(0, offset))).collect();
        assert_eq!(acks.batches(), 3, "2 + 2 + 1");
        for token in &tokens[..4] {
            token.acknowledge();
        }
        assert_eq!(collected(&mut acks).len(), 4);
        assert_eq!(acks.batches(), 1, "the two full ones, all seen, gone");
        tokens[4].acknowledge();
        assert_eq!(collected(&mut acks), [(0, 4)]);
        assert_eq!(acks.batches(), 1, "the newest stays: it may still be filled");
        acks.start_batch(10);
        acks.collect(|_| {});
        assert_eq!(acks.batches(), 1, "once no longer the newest, it goes");
    }

    #[test]
    fn a_batch_with_room_is_filled_further_and_one_without_is_followed_by_a_new_one() {
        let mut acks = Acknowledgements::new("t".into());
        acks.reserve(10);
        acks.track(handled(0, 0));
        acks.reserve(9);
        assert_eq!(acks.batches(), 1, "room for 9 more");
        acks.reserve(10);
        assert_eq!(acks.batches(), 2);
    }

    #[test]
    fn a_batch_of_stale_messages_is_forgotten_and_their_late_acknowledgements_ignored() {
        let mut acks = Acknowledgements::new("t".into());
        acks.start_batch(4);
        let tokens: Vec<Acknowledgement> = [(0, 1), (1, 1), (0, 2), (1, 2)]
            .into_iter()
            .map(|(partition, offset)| acks.track(handled(partition, offset)))
            .collect();
        acks.start_batch(4);
        tokens[0].acknowledge();
        assert_eq!(collected(&mut acks), [(0, 1)]);
        acks.forget(|h| h.partition == 1);
        assert_eq!(acks.batches(), 2, "partition 0's offset 2 still to come");
        tokens[1].acknowledge();
        assert!(collected(&mut acks).is_empty(), "forgotten");
        tokens[2].acknowledge();
        assert_eq!(collected(&mut acks), [(0, 2)]);
        assert_eq!(acks.batches(), 1, "all seen or forgotten: gone");
    }
}
