//! Where the poll thread waits when it has nothing to do, and what wakes it.
//!
//! The poll thread has several things to wait for at once: a message on any assigned partition's
//! queue, an event on the consumer's main queue (a rebalance, an error), and, when the buffer is full,
//! the reader making room. librdkafka can call a function when one of its queues goes from empty to
//! not empty (`fetch_queues`), and the reader can call one when it takes an item the poll thread waits
//! for (`delivery_buffer`): both ring this one doorbell.
//!
//! A ring is remembered until the next [`reset`](Doorbell::reset), so one that comes between the poll
//! thread's look at its queues and its wait is not lost.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

#[derive(Default)]
pub(crate) struct Doorbell {
    state: Mutex<State>,
    bell: Condvar,
}

#[derive(Default)]
struct State {
    rung: bool,
    /// Whether the poll thread waits: only then does a ring notify. A notification is a system call
    /// (a futex wake), and librdkafka rings on every queue that turns non-empty: in a drain of twelve
    /// partitions, futex calls were 7% of the poll thread's time while it rarely waited.
    waiting: bool,
}

impl Doorbell {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the poll thread if it waits, or keeps it from waiting next time. Cheap enough to be called
    /// by librdkafka with a queue's lock held: a lock of its own, never held across anything else.
    pub fn ring(&self) {
        let waiting = {
            let mut state = self.lock();
            state.rung = true;
            state.waiting
        };
        if waiting {
            self.bell.notify_one();
        }
    }

    /// Forgets earlier rings: called before the poll thread looks at its queues, so that only what
    /// arrives after the look rings.
    pub fn reset(&self) {
        self.lock().rung = false;
    }

    /// Waits until rung (since the last [`reset`](Self::reset)), at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let mut state = self.lock();
        state.waiting = true;
        let (mut state, _) = self
            .bell
            .wait_timeout_while(state, timeout, |state| !state.rung)
            .unwrap_or_else(PoisonError::into_inner);
        state.waiting = false;
        state.rung = false;
    }
}

#[cfg(test)]
impl Doorbell {
    /// Waits up to `timeout`; whether a ring ended the wait before that.
    pub fn rings_within(&self, timeout: Duration) -> bool {
        let started = std::time::Instant::now();
        self.wait(timeout);
        started.elapsed() < timeout
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let doorbell = Doorbell::default();
        doorbell.reset();
        doorbell.ring();
        assert!(
            doorbell.rings_within(Duration::from_secs(10)),
            "waited for a ring that had come"
        );
    }

    #[test]
    fn a_reset_forgets_earlier_rings() {
        let doorbell = Doorbell::default();
        doorbell.ring();
        doorbell.reset();
        assert!(
            !doorbell.rings_within(Duration::from_millis(50)),
            "woke for a ring from before the reset"
        );
    }

    #[test]
    fn a_ring_from_another_thread_wakes_the_waiter() {
        let doorbell = Arc::new(Doorbell::default());
        doorbell.reset();
        let ringer = std::thread::spawn({
            let doorbell = doorbell.clone();
            move || {
                std::thread::sleep(Duration::from_millis(20));
                doorbell.ring();
            }
        });
        assert!(doorbell.rings_within(Duration::from_secs(10)));
        ringer.join().unwrap();
    }
}
