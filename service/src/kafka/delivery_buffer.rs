//! The hand-over between the poll thread and the stream: one queue per partition, served round-robin.
//!
//! The poll thread pushes a whole batch under one lock and wakes the reader once; the reader takes one
//! item per `poll_next`, without a wake-up, until the buffer is empty. Keeping a queue per partition
//! (instead of one FIFO channel) gives two things a channel cannot:
//!
//! * **Fairness.** Items are taken from the partitions in turn, so a partition with a large backlog
//!   cannot hold back the messages of the others that are already here. Within a partition, the queue
//!   keeps offset order.
//! * **Exact revocation.** When a partition is revoked its queue is dropped on the spot, so the stream
//!   never hands out a message of a partition this consumer no longer owns (its new owner reads it).
//!
//! The buffer does not bound itself: the poll thread reads at most `consume_size` messages into it and
//! pauses partitions when the reader falls behind (see `poll_loop`), which bounds it without blocking.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub(crate) struct DeliveryBuffer<T> {
    inner: Mutex<Inner<T>>,
    /// Signalled when the reader takes an item while the poll thread waits in
    /// [`wait_below`](DeliveryBuffer::wait_below).
    taken: Condvar,
}

struct Inner<T> {
    queues: BTreeMap<i32, VecDeque<T>>,
    len: usize,
    /// The partition an item was last taken from; the next one is taken from the partition after it.
    last_served: Option<i32>,
    /// The reader waiting for an item, if it found none.
    waker: Option<Waker>,
    /// While the poll thread waits in [`wait_below`](DeliveryBuffer::wait_below): the length it waits
    /// for the buffer to drop under. The reader signals `taken` only then, not on every item: a
    /// condition-variable signal is a system call, and the reader takes hundreds of thousands of items a
    /// second.
    awaited_below: Option<usize>,
    /// An item to hand out before anything else, then end (a fatal error).
    last_words: Option<T>,
    finished: bool,
}

impl<T> DeliveryBuffer<T> {
    pub fn new() -> Self {
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
            taken: Condvar::new(),
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

    /// The number of undelivered items, in total and per partition.
    pub fn lengths(&self) -> (usize, BTreeMap<i32, usize>) {
        let inner = self.lock();
        let per_partition = inner.queues.iter().map(|(&p, q)| (p, q.len())).collect();
        (inner.len, per_partition)
    }

    /// Waits up to `grace` for the reader to bring the buffer below `limit` items; returns the number of
    /// items then. The poll thread calls it before deciding that the reader is slow.
    pub fn wait_below(&self, limit: usize, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut inner = self.lock();
        while inner.len >= limit && !inner.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            inner.awaited_below = Some(limit);
            inner = self
                .taken
                .wait_timeout(inner, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        inner.awaited_below = None;
        inner.len
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
                drop(inner);
                if awaited {
                    self.taken.notify_one();
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
        let buffer = DeliveryBuffer::new();
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
        let buffer = DeliveryBuffer::new();
        let mut cx = Context::from_waker(Waker::noop());
        buffer.push_batch([(0, "a0"), (1, "b0")]);
        assert_eq!(buffer.poll_take(&mut cx), Poll::Ready(Some("a0")));
        buffer.push_batch([(0, "a1")]);
        assert_eq!(take_all(&buffer), ["b0", "a1"]);
    }

    #[test]
    fn a_revoked_partition_loses_its_undelivered_items() {
        let buffer = DeliveryBuffer::new();
        buffer.push_batch([(0, "a0"), (1, "b0"), (1, "b1")]);
        assert_eq!(buffer.remove_partition(1), 2);
        assert_eq!(buffer.lengths().0, 1);
        assert_eq!(take_all(&buffer), ["a0"]);
    }

    #[test]
    fn waiting_for_room_returns_at_once_or_after_the_grace() {
        let buffer = DeliveryBuffer::new();
        buffer.push_batch([(0, "a0"), (0, "a1")]);
        assert_eq!(
            buffer.wait_below(3, Duration::from_secs(10)),
            2,
            "already below: no wait"
        );
        let started = Instant::now();
        assert_eq!(buffer.wait_below(2, Duration::from_millis(20)), 2);
        assert!(started.elapsed() >= Duration::from_millis(20));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                take_all(&buffer);
            });
            assert!(
                buffer.wait_below(2, Duration::from_secs(10)) < 2,
                "woken by the reader"
            );
        });
    }

    #[test]
    fn finishing_hands_out_the_last_words_then_ends() {
        let buffer = DeliveryBuffer::new();
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
