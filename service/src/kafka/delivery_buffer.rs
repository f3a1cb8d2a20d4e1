//! The hand-over between the poll thread and the stream: one queue per partition, served round-robin.
//!
//! The poll thread pushes a whole batch under one lock and wakes the reader once; the reader takes up to
//! [`TAKE_AT_ONCE`] items under one lock into a [`Taken`] of its own, and hands them out one per
//! `poll_next` without a lock, until both are empty. (One lock an item was a sixth of the reader's
//! time in a 12-partition drain, and each lock bounced the buffer's cache line between the two threads.) The reader rings the poll
//! thread's doorbell only when the poll thread asked for it (it waits for room). Keeping a queue per partition
//! (instead of one FIFO channel) gives two things a channel cannot:
//!
//! * **Fairness.** Items are taken from the partitions in turn, so a partition with a large backlog
//!   cannot hold back the messages of the others that are already here. Within a partition, the queue
//!   keeps offset order.
//! * **Exact revocation.** When a partition is revoked its queue is dropped on the spot, so the stream
//!   never hands out a message of a partition this consumer no longer owns (its new owner reads it).
//!
//! The buffer does not bound itself: the poll thread reads no more than the room `consume_size` leaves
//! (see `read_policy`), which bounds it without blocking.

#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::doorbell::Doorbell;

/// How many items the reader takes under one lock. Small next to `consume_size`: the items it holds
/// count as taken, so the buffer and they together hold at most `consume_size` plus this.
pub const TAKE_AT_ONCE: usize = 32;

pub(crate) struct DeliveryBuffer<T> {
    inner: Mutex<Inner<T>>,
    /// Counts the removals of queues (a revocation, a rewind, the end), so that the reader can tell
    /// without the lock that items it took may belong to a queue that is gone.
    removals: AtomicU64,
    take_at_once: usize,
    /// The poll thread's, rung when the reader takes an item the poll thread waits for
    /// ([`ring_when_below`](DeliveryBuffer::ring_when_below)).
    doorbell: Arc<Doorbell>,
}

struct Inner<T> {
    /// A queue per partition, sorted by partition. A vector, not a map: the reader looks for the next
    /// partition with items for every item it takes, and over a dozen partitions a scan of a vector
    /// is cheaper than a map's range (which was 7% of the reader's time in a 12-partition drain).
    queues: Vec<Queue<T>>,
    /// The generation the next queue made gets.
    next_generation: u64,
    len: usize,
    /// The partition an item was last taken from; the next one is taken from the partition after it.
    last_served: Option<i32>,
    /// The reader waiting for an item, if it found none.
    waker: Option<Waker>,
    /// Set by [`ring_when_below`](DeliveryBuffer::ring_when_below): the length the poll thread waits for
    /// the buffer to drop under. The reader rings only then, not on every item: a wake-up is a system
    /// call, and the reader takes hundreds of thousands of items a second.
    awaited_below: Option<usize>,
    /// An item to hand out before anything else, then end (a fatal error).
    last_words: Option<T>,
    finished: bool,
}

/// A partition's queue. Its generation tells it from a queue of the same partition made after this
/// one was removed (the partition revoked and assigned again).
struct Queue<T> {
    partition: i32,
    generation: u64,
    items: VecDeque<T>,
}

/// What the reader took from the buffer and has not handed out yet, in order, each item with its
/// queue's partition and generation.
pub(crate) struct Taken<T> {
    items: VecDeque<(i32, u64, T)>,
    /// The buffer's removals when the reader last looked.
    removals: u64,
}

impl<T> Default for Taken<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            removals: 0,
        }
    }
}

impl<T> Inner<T> {
    fn find(&self, partition: i32) -> Result<usize, usize> {
        self.queues
            .binary_search_by_key(&partition, |queue| queue.partition)
    }

    /// The index of the partition's queue, made if it has none.
    fn queue_index(&mut self, partition: i32) -> usize {
        match self.find(partition) {
            Ok(index) => index,
            Err(index) => {
                let generation = self.next_generation;
                self.next_generation += 1;
                let queue = Queue {
                    partition,
                    generation,
                    items: VecDeque::new(),
                };
                self.queues.insert(index, queue);
                index
            }
        }
    }

    /// The next item of the first partition after the one last served (in partition order, wrapping
    /// round) that has one.
    fn take_next(&mut self) -> Option<(i32, u64, T)> {
        let count = self.queues.len();
        let start = match self.last_served {
            Some(last) => self.queues.partition_point(|queue| queue.partition <= last),
            None => 0,
        };
        let index = (0..count)
            .map(|step| (start + step) % count)
            .find(|&index| !self.queues[index].items.is_empty())?;
        let queue = &mut self.queues[index];
        self.last_served = Some(queue.partition);
        let item = queue.items.pop_front()?;
        self.len -= 1;
        Some((queue.partition, queue.generation, item))
    }

    /// Whether the queue an item was taken from is still there.
    fn holds(&self, partition: i32, generation: u64) -> bool {
        self.find(partition)
            .is_ok_and(|index| self.queues[index].generation == generation)
    }
}

impl<T> DeliveryBuffer<T> {
    /// A buffer whose reader takes up to `take_at_once` items at a time ([`TAKE_AT_ONCE`]).
    pub fn new(doorbell: Arc<Doorbell>, take_at_once: usize) -> Self {
        Self {
            removals: AtomicU64::new(0),
            take_at_once: take_at_once.max(1),
            inner: Mutex::new(Inner {
                queues: Vec::new(),
                next_generation: 0,
                len: 0,
                last_served: None,
                waker: None,
                awaited_below: None,
                last_words: None,
                finished: false,
            }),
            doorbell,
        }
    }

    /// Both sides keep the buffer consistent at every step, so a panic elsewhere that poisoned the lock
    /// left nothing half-done: carry on with the data.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a batch, each item to its partition's queue, and wakes the reader once.
    pub fn push_batch(&self, items: impl IntoIterator<Item = (i32, T)>) {
        let waker = {
            let mut inner = self.lock();
            if inner.finished {
                return;
            }
            // A batch comes partition by partition: look a queue up only when the partition changes.
            let mut current: Option<(i32, usize)> = None;
            for (partition, item) in items {
                let index = match current {
                    Some((last, index)) if last == partition => index,
                    _ => inner.queue_index(partition),
                };
                current = Some((partition, index));
                inner.queues[index].items.push_back(item);
                inner.len += 1;
            }
            if inner.len == 0 { None } else { inner.waker.take() }
        };
        // Wake outside the lock: the reader may run at once and want it.
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Drops the partition's undelivered items; returns how many.
    pub fn remove_partition(&self, partition: i32) -> usize {
        let mut inner = self.lock();
        let dropped = match inner.find(partition) {
            Ok(index) => inner.queues.remove(index).items.len(),
            Err(_) => 0,
        };
        inner.len -= dropped;
        self.removals.fetch_add(1, Ordering::Release);
        dropped
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.queues.clear();
        inner.len = 0;
        self.removals.fetch_add(1, Ordering::Release);
    }

    /// The number of undelivered items.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// The number of undelivered items, in total and per partition.
    #[cfg(test)]
    pub fn lengths(&self) -> (usize, BTreeMap<i32, usize>) {
        let inner = self.lock();
        let per_partition = inner
            .queues
            .iter()
            .map(|q| (q.partition, q.items.len()))
            .collect();
        (inner.len, per_partition)
    }

    /// Has the reader ring the doorbell once the buffer is below `limit` items (once: the poll thread
    /// asks again if it waits again).
    pub fn ring_when_below(&self, limit: usize) {
        self.lock().awaited_below = Some(limit);
    }

    /// Ends the stream: `last_words` (if any) is the next item, then `None`; buffered items are dropped,
    /// as the consumer that could have committed them is gone.
    pub fn finish(&self, last_words: Option<T>) {
        let waker = {
            let mut inner = self.lock();
            if inner.finished {
                return;
            }
            inner.finished = true;
            inner.last_words = last_words;
            inner.queues.clear();
            inner.len = 0;
            self.removals.fetch_add(1, Ordering::Release);
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The reader's side: the next item round-robin across partitions, or `Pending` with the waker kept.
    /// Items come from `taken` first; when it is empty, up to `take_at_once` more are moved into it under
    /// one lock. Items of a queue removed since they were taken are dropped, as if they had still been in
    /// the buffer: the stream never hands out a message of a partition revoked before it.
    pub fn poll_take(&self, cx: &mut Context<'_>, taken: &mut Taken<T>) -> Poll<Option<T>> {
        if self.removals.load(Ordering::Acquire) == taken.removals
            && let Some((_, _, item)) = taken.items.pop_front()
        {
            return Poll::Ready(Some(item));
        }
        let mut inner = self.lock();
        // Read under the lock, which every removal holds: nothing is removed until it is released.
        taken.removals = self.removals.load(Ordering::Acquire);
        if inner.finished {
            taken.items.clear();
            return Poll::Ready(inner.last_words.take());
        }
        // Here `taken` is empty, or a queue was removed since it was filled: keep what is still owned.
        taken
            .items
            .retain(|(partition, generation, _)| inner.holds(*partition, *generation));
        while taken.items.len() < self.take_at_once
            && let Some(item) = inner.take_next()
        {
            taken.items.push_back(item);
        }
        let Some((_, _, item)) = taken.items.pop_front() else {
            inner.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let awaited = inner.awaited_below.is_some_and(|limit| inner.len < limit);
        if awaited {
            inner.awaited_below = None;
        }
        drop(inner);
        if awaited {
            self.doorbell.ring();
        }
        Poll::Ready(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;
    use std::time::Duration;

    /// The stream's side of a buffer: the buffer and what it took.
    struct Reader {
        buffer: DeliveryBuffer<&'static str>,
        taken: Taken<&'static str>,
    }

    impl Reader {
        fn new(doorbell: Arc<Doorbell>, take_at_once: usize) -> Self {
            Self {
                buffer: DeliveryBuffer::new(doorbell, take_at_once),
                taken: Taken::default(),
            }
        }

        fn take(&mut self) -> Poll<Option<&'static str>> {
            let mut cx = Context::from_waker(Waker::noop());
            self.buffer.poll_take(&mut cx, &mut self.taken)
        }

        fn take_all(&mut self) -> Vec<&'static str> {
            let mut taken = Vec::new();
            while let Poll::Ready(Some(item)) = self.take() {
                taken.push(item);
            }
            taken
        }
    }

    #[test]
    fn partitions_are_served_in_turn_each_in_order() {
        for take_at_once in [1, 3, TAKE_AT_ONCE] {
            let mut reader = Reader::new(Arc::default(), take_at_once);
            reader.buffer.push_batch([
                (0, "a0"),
                (0, "a1"),
                (0, "a2"),
                (0, "a3"),
                (1, "b0"),
                (2, "c0"),
                (2, "c1"),
            ]);
            assert_eq!(
                reader.take_all(),
                ["a0", "b0", "c0", "a1", "c1", "a2", "a3"],
                "{take_at_once} at once"
            );
        }
    }

    #[test]
    fn the_turn_continues_across_batches() {
        let mut reader = Reader::new(Arc::default(), 1);
        reader.buffer.push_batch([(0, "a0"), (1, "b0")]);
        assert_eq!(reader.take(), Poll::Ready(Some("a0")));
        reader.buffer.push_batch([(0, "a1")]);
        assert_eq!(reader.take_all(), ["b0", "a1"]);
    }

    #[test]
    fn a_revoked_partition_loses_its_undelivered_items() {
        let mut reader = Reader::new(Arc::default(), TAKE_AT_ONCE);
        reader.buffer.push_batch([(0, "a0"), (1, "b0"), (1, "b1")]);
        assert_eq!(reader.buffer.remove_partition(1), 2);
        assert_eq!(reader.buffer.lengths().0, 1);
        assert_eq!(reader.take_all(), ["a0"]);
    }

    #[test]
    fn items_taken_but_not_handed_out_go_with_their_revoked_partition_even_if_it_comes_back() {
        let mut reader = Reader::new(Arc::default(), TAKE_AT_ONCE);
        reader
            .buffer
            .push_batch([(0, "a0"), (0, "a1"), (1, "b0"), (1, "b1"), (2, "c0")]);
        assert_eq!(reader.take(), Poll::Ready(Some("a0")), "the rest taken with it");
        assert_eq!(reader.buffer.lengths().0, 0);
        reader.buffer.remove_partition(1);
        // Assigned again: its new items are served, the old ones the reader held are not.
        reader.buffer.push_batch([(1, "b0 again")]);
        assert_eq!(reader.take_all(), ["c0", "a1", "b0 again"]);
    }

    #[test]
    fn the_reader_rings_once_when_it_took_the_buffer_below_what_the_poll_thread_waits_for() {
        let doorbell = Arc::new(Doorbell::default());
        let mut reader = Reader::new(doorbell.clone(), 1);
        reader.buffer.push_batch([(0, "a0"), (0, "a1"), (0, "a2")]);
        reader.buffer.ring_when_below(2);
        doorbell.reset();
        assert_eq!(reader.take(), Poll::Ready(Some("a0")));
        let quiet = Duration::from_millis(30);
        assert!(!doorbell.rings_within(quiet), "rang at 2 items: not below 2");
        assert_eq!(reader.take(), Poll::Ready(Some("a1")));
        assert!(
            doorbell.rings_within(Duration::from_secs(10)),
            "did not ring at 1 item"
        );
        doorbell.reset();
        assert_eq!(reader.take(), Poll::Ready(Some("a2")));
        assert!(!doorbell.rings_within(quiet), "rang again without being asked");
    }

    /// A waker that counts its wake-ups.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_reader_that_found_nothing_is_woken_by_the_next_batch_once() {
        let buffer = DeliveryBuffer::new(Arc::default(), TAKE_AT_ONCE);
        let mut taken = Taken::default();
        let counter = Arc::new(Counter(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(buffer.poll_take(&mut cx, &mut taken), Poll::Pending);
        buffer.push_batch(std::iter::empty());
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            0,
            "nothing to take: no wake-up"
        );
        buffer.push_batch([(0, "a0")]);
        buffer.push_batch([(0, "a1")]);
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        assert_eq!(buffer.poll_take(&mut cx, &mut taken), Poll::Ready(Some("a0")));
    }

    #[test]
    fn the_length_counts_what_the_reader_has_not_taken_and_clearing_drops_it_all() {
        let mut reader = Reader::new(Arc::default(), 2);
        reader
            .buffer
            .push_batch([(0, "a0"), (0, "a1"), (1, "b0"), (1, "b1"), (2, "c0")]);
        assert_eq!(reader.buffer.len(), 5);
        assert_eq!(reader.take(), Poll::Ready(Some("a0")));
        assert_eq!(reader.buffer.len(), 3, "two taken at once");
        reader.buffer.clear();
        assert_eq!(reader.buffer.len(), 0);
        assert_eq!(reader.take(), Poll::Pending, "b0, taken with a0, went too");
    }

    #[test]
    fn finishing_hands_out_the_last_words_then_ends() {
        let mut reader = Reader::new(Arc::default(), TAKE_AT_ONCE);
        assert_eq!(reader.take(), Poll::Pending);
        reader.buffer.push_batch([(0, "a0"), (0, "a1")]);
        assert_eq!(reader.take(), Poll::Ready(Some("a0")), "a1 taken with it");
        reader.buffer.finish(Some("fatal"));
        assert_eq!(reader.take(), Poll::Ready(Some("fatal")), "a1 dropped");
        assert_eq!(reader.take(), Poll::Ready(None));
        reader.buffer.push_batch([(0, "late")]);
        assert_eq!(reader.take(), Poll::Ready(None));
    }
}
