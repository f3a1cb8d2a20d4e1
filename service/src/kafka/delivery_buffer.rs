//! The hand-over between the poll thread and the stream: one queue per partition, served round-robin.
//!
//! The poll thread pushes a whole batch under one lock and wakes the reader once; the reader takes one
//! item per `poll_next`, without a wake-up, until the buffer is empty. The reader rings the poll
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

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::doorbell::Doorbell;

pub(crate) struct DeliveryBuffer<T> {
    inner: Mutex<Inner<T>>,
    /// The poll thread's, rung when the reader takes an item the poll thread waits for
    /// ([`ring_when_below`](DeliveryBuffer::ring_when_below)).
    doorbell: Arc<Doorbell>,
}

struct Inner<T> {
    queues: BTreeMap<i32, VecDeque<T>>,
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

impl<T> DeliveryBuffer<T> {
    pub fn new(doorbell: Arc<Doorbell>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queues: BTreeMap::new(),
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
            for (partition, item) in items {
                inner.queues.entry(partition).or_default().push_back(item);
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
        let dropped = inner.queues.remove(&partition).map_or(0, |queue| queue.len());
        inner.len -= dropped;
        dropped
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.queues.clear();
        inner.len = 0;
    }

    /// The number of undelivered items.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// The number of undelivered items, in total and per partition.
    #[cfg(test)]
    pub fn lengths(&self) -> (usize, BTreeMap<i32, usize>) {
        let inner = self.lock();
        let per_partition = inner.queues.iter().map(|(&p, q)| (p, q.len())).collect();
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
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The reader's side: the next item round-robin across partitions, or `Pending` with the waker kept.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut inner = self.lock();
        if inner.finished {
            return Poll::Ready(inner.last_words.take());
        }
        let after = inner.last_served.map_or(Bound::Unbounded, Bound::Excluded);
        let next_partition = inner
            .queues
            .range((after, Bound::Unbounded))
            .chain(inner.queues.iter())
            .find(|(_, queue)| !queue.is_empty())
            .map(|(&partition, _)| partition);
        let item = next_partition.and_then(|partition| {
            inner.last_served = Some(partition);
            inner.queues.get_mut(&partition).and_then(VecDeque::pop_front)
        });
        match item {
            Some(item) => {
                inner.len -= 1;
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
            None => {
                inner.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;
    use std::time::Duration;

    fn take_all(buffer: &DeliveryBuffer<&'static str>) -> Vec<&'static str> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = Vec::new();
        while let Poll::Ready(Some(item)) = buffer.poll_take(&mut cx) {
            taken.push(item);
        }
        taken
    }

    #[test]
    fn partitions_are_served_in_turn_each_in_order() {
        let buffer = DeliveryBuffer::new(Arc::default());
        buffer.push_batch([
            (0, "a0"),
            (0, "a1"),
            (0, "a2"),
            (0, "a3"),
            (1, "b0"),
            (2, "c0"),
            (2, "c1"),
        ]);
        assert_eq!(take_all(&buffer), ["a0", "b0", "c0", "a1", "c1", "a2", "a3"]);
    }

    #[test]
    fn the_turn_continues_across_batches() {
        let buffer = DeliveryBuffer::new(Arc::default());
        let mut cx = Context::from_waker(Waker::noop());
        buffer.push_batch([(0, "a0"), (1, "b0")]);
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(Some("a0")));
        buffer.push_batch([(0, "a1")]);
        assert_eq!(take_all(&buffer), ["b0", "a1"]);
    }

    #[test]
    fn a_revoked_partition_loses_its_undelivered_items() {
        let buffer = DeliveryBuffer::new(Arc::default());
        buffer.push_batch([(0, "a0"), (1, "b0"), (1, "b1")]);
        assert_eq!(buffer.remove_partition(1), 2);
        assert_eq!(buffer.lengths().0, 1);
        assert_eq!(take_all(&buffer), ["a0"]);
    }

    #[test]
    fn the_reader_rings_once_when_it_took_the_buffer_below_what_the_poll_thread_waits_for() {
        let doorbell = Arc::new(Doorbell::default());
        let buffer = DeliveryBuffer::new(doorbell.clone());
        let mut cx = Context::from_waker(Waker::noop());
        buffer.push_batch([(0, "a0"), (0, "a1"), (0, "a2")]);
        buffer.ring_when_below(2);
        doorbell.reset();
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(Some("a0")));
        let quiet = Duration::from_millis(30);
        assert!(!doorbell.rings_within(quiet), "rang at 2 items: not below 2");
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(Some("a1")));
        assert!(
            doorbell.rings_within(Duration::from_secs(10)),
            "did not ring at 1 item"
        );
        doorbell.reset();
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(Some("a2")));
        assert!(!doorbell.rings_within(quiet), "rang again without being asked");
    }

    #[test]
    fn finishing_hands_out_the_last_words_then_ends() {
        let buffer = DeliveryBuffer::new(Arc::default());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(buffer.poll_take(&mut cx), Poll::Pending);
        buffer.push_batch([(0, "a0")]);
        buffer.finish(Some("fatal"));
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(Some("fatal")));
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(None));
        buffer.push_batch([(0, "late")]);
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(None));
    }
}
