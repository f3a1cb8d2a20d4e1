//! Group commit: writes that arrive while others are being written wait and go together, one statement
//! and one commit for the lot.
//!
//! A `CreateOrder` costs the database a statement, a commit (a WAL flush) and a `NOTIFY`, and costs the
//! service a round trip on its socket: on this project's two-core machine those, not the rows, were what
//! held the write path (docs/BENCHMARKS.md, section 6). With at most [`Limits::flushes`] batches in
//! flight, a write that finds them all busy joins the queue, and the next free flush takes everything
//! queued (up to [`Limits::max_batch`]) as one batch. Nothing waits for company: under light load a
//! write finds a free flush and goes alone, at once, so batching only appears when there is a queue to
//! batch, and its size follows the load.
//!
//! # Guarantees
//!
//! * Every accepted write gets exactly the outcome its flush produced for it. The flush runs on its own
//!   task, so a caller that stops waiting (a cancelled RPC) neither loses its write nor the others' of
//!   its batch; it only misses its answer.
//! * At most [`Limits::flushes`] flushes run at once, each with at most [`Limits::max_batch`] writes, and
//!   at most [`Limits::max_queued`] writes wait: beyond that, [`GroupCommit::submit`] refuses at once
//!   ([`Refused::Full`]) instead of queueing without end. (The server's admission control bounds the
//!   callers well below it; the bound is this module's own, not borrowed from the caller.)
//! * Writes are flushed in the order they were submitted, batch by batch; flushes running at once may
//!   commit in any order, as independent transactions do.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Writes one batch.
pub trait Flush: Send + Sync + 'static {
    type Write: Send + 'static;
    type Outcome: Send + 'static;

    /// Writes `batch` and returns one outcome per write, in the batch's order. A write left without an
    /// outcome (a shorter vector, or a panic) is answered [`Refused::Lost`].
    fn flush(&self, batch: Vec<Self::Write>) -> impl Future<Output = Vec<Self::Outcome>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Batches written at once.
    pub flushes: usize,
    /// Writes in one batch.
    pub max_batch: usize,
    /// Writes waiting for a flush.
    pub max_queued: usize,
}

/// Why a write got no outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} writes are already waiting for the database")]
    Full(usize),
    #[error("the write's flush ended without an outcome for it")]
    Lost,
}

/// A queue of writes in front of a [`Flush`]; cheap to clone, every clone shares the queue.
pub struct GroupCommit<F: Flush> {
    shared: Arc<Shared<F>>,
}

impl<F: Flush> Clone for GroupCommit<F> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<F: Flush> std::fmt::Debug for GroupCommit<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

struct Shared<F: Flush> {
    flusher: F,
    limits: Limits,
    // A std mutex: held only to push or take, never across an await.
    state: Mutex<State<F::Write, F::Outcome>>,
}

/// A write waiting for a flush, with where its outcome goes.
type Waiting<W, O> = (W, oneshot::Sender<O>);

struct State<W, O> {
    queue: VecDeque<Waiting<W, O>>,
    /// Flush tasks running.
    flushing: usize,
}

impl<F: Flush> GroupCommit<F> {
    pub fn new(flusher: F, limits: Limits) -> Self {
        assert!(
            limits.flushes > 0 && limits.max_batch > 0,
            "group commit needs at least one flush of one write: {limits:?}"
        );
        Self {
            shared: Arc::new(Shared {
                flusher,
                limits,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    flushing: 0,
                }),
            }),
        }
    }

    /// Writes `write` with whatever else is waiting, and returns its outcome. Must be called within a
    /// Tokio runtime: a flush that is not yet running starts on a task of its own.
    pub async fn submit(&self, write: F::Write) -> Result<F::Outcome, Refused> {
        let (sender, outcome) = oneshot::channel();
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.queue.len() >= self.shared.limits.max_queued {
                return Err(Refused::Full(state.queue.len()));
            }
            state.queue.push_back((write, sender));
            if state.flushing < self.shared.limits.flushes {
                state.flushing += 1;
                tokio::spawn(flush_queue(self.shared.clone()));
            }
        }
        outcome.await.map_err(|_| Refused::Lost)
    }
}

/// Flushes batches until the queue is empty, then ends (a later write starts another).
async fn flush_queue<F: Flush>(shared: Arc<Shared<F>>) {
    let mut slot = Slot {
        shared: shared.clone(),
        held: true,
    };
    while let Some(batch) = slot.take_batch() {
        let (writes, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let outcomes = shared.flusher.flush(writes).await;
        for (sender, outcome) in senders.into_iter().zip(outcomes) {
            // A caller that stopped waiting dropped its receiver: its write is done all the same.
            let _ = sender.send(outcome);
        }
    }
}

/// A flush task's place among the [`Limits::flushes`].
struct Slot<F: Flush> {
    shared: Arc<Shared<F>>,
    held: bool,
}

impl<F: Flush> Slot<F> {
    /// The next batch; or `None`, the slot given back under the same lock, when nothing waits (a write
    /// queued after that finds the slot free and starts a flush).
    fn take_batch(&mut self) -> Option<Vec<Waiting<F::Write, F::Outcome>>> {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.queue.is_empty() {
            state.flushing -= 1;
            self.held = false;
            return None;
        }
        let size = state.queue.len().min(self.shared.limits.max_batch);
        Some(state.queue.drain(..size).collect())
    }
}

impl<F: Flush> Drop for Slot<F> {
    /// Only a flush that panicked (or a runtime shutting down) drops a held slot. Its batch's callers
    /// get [`Refused::Lost`]; the writes queued behind it get a new flush in its place, since no later
    /// write might come to start one.
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.queue.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            state.flushing -= 1;
        } else {
            tokio::spawn(flush_queue(self.shared.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    /// Records each batch and answers each write with its double; waits for a permit before it returns,
    /// so a test decides when a flush ends. A write of 0 makes the flush panic.
    struct Recorder {
        batches: Mutex<Vec<Vec<u32>>>,
        gate: Arc<Semaphore>,
        running: AtomicUsize,
        most_running: AtomicUsize,
    }

    impl Flush for Arc<Recorder> {
        type Write = u32;
        type Outcome = u32;

        async fn flush(&self, batch: Vec<u32>) -> Vec<u32> {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(running, Ordering::SeqCst);
            self.batches.lock().unwrap().push(batch.clone());
            self.gate.acquire().await.expect("gate open").forget();
            self.running.fetch_sub(1, Ordering::SeqCst);
            assert!(!batch.contains(&0), "a write of 0 makes the flush panic");
            batch.iter().map(|write| write * 2).collect()
        }
    }

    fn limits(flushes: usize, max_batch: usize, max_queued: usize) -> Limits {
        Limits {
            flushes,
            max_batch,
            max_queued,
        }
    }

    fn group(limits: Limits) -> (GroupCommit<Arc<Recorder>>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder {
            batches: Mutex::default(),
            gate: Arc::new(Semaphore::new(0)),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
        });
        (GroupCommit::new(recorder.clone(), limits), recorder)
    }

    fn batches(recorder: &Recorder) -> Vec<Vec<u32>> {
        recorder.batches.lock().unwrap().clone()
    }

    /// Submits `write` on a task of its own, and waits until the queue or a flush has it.
    async fn submit(
        group: &GroupCommit<Arc<Recorder>>,
        write: u32,
    ) -> tokio::task::JoinHandle<Result<u32, Refused>> {
        let before = submitted(group);
        let task = tokio::spawn({
            let group = group.clone();
            async move { group.submit(write).await }
        });
        while submitted(group) == before {
            tokio::task::yield_now().await;
        }
        task
    }

    /// Writes queued plus batches taken so far, a number that grows with every submitted write.
    fn submitted(group: &GroupCommit<Arc<Recorder>>) -> usize {
        let queued = group.shared.state.lock().unwrap().queue.len();
        let flushed: usize = batches(&group.shared.flusher).iter().map(Vec::len).sum();
        queued + flushed
    }

    async fn until_batches(recorder: &Recorder, count: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while batches(recorder).len() < count {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{count} batches expected, got {:?}", batches(recorder)));
    }

    #[tokio::test]
    async fn a_lone_write_goes_at_once_and_alone() {
        let (group, recorder) = group(limits(1, 64, 64));
        recorder.gate.add_permits(1);
        assert_eq!(group.submit(21).await, Ok(42));
        assert_eq!(batches(&recorder), [vec![21]]);
    }

    #[tokio::test]
    async fn writes_that_arrive_while_the_flushes_are_busy_go_together_in_order() {
        let (group, recorder) = group(limits(1, 64, 64));
        let first = submit(&group, 1).await;
        until_batches(&recorder, 1).await;
        let rest = [
            submit(&group, 2).await,
            submit(&group, 3).await,
            submit(&group, 4).await,
        ];
        recorder.gate.add_permits(2);
        assert_eq!(first.await.unwrap(), Ok(2));
        for (task, write) in rest.into_iter().zip(2..) {
            assert_eq!(task.await.unwrap(), Ok(write * 2));
        }
        assert_eq!(batches(&recorder), [vec![1], vec![2, 3, 4]]);
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_batch_writes() {
        let (group, recorder) = group(limits(1, 2, 64));
        let mut tasks = vec![submit(&group, 1).await];
        until_batches(&recorder, 1).await;
        for write in 2..=4 {
            tasks.push(submit(&group, write).await);
        }
        recorder.gate.add_permits(3);
        for task in tasks {
            task.await.unwrap().expect("an outcome");
        }
        assert_eq!(batches(&recorder), [vec![1], vec![2, 3], vec![4]]);
    }

    #[tokio::test]
    async fn no_more_than_the_allowed_flushes_run_at_once() {
        let (group, recorder) = group(limits(2, 1, 64));
        let mut tasks = Vec::new();
        for write in 1..=6 {
            tasks.push(submit(&group, write).await);
        }
        until_batches(&recorder, 2).await;
        recorder.gate.add_permits(6);
        for task in tasks {
            task.await.unwrap().expect("an outcome");
        }
        assert_eq!(batches(&recorder).len(), 6);
        assert_eq!(recorder.most_running.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let (group, recorder) = group(limits(1, 64, 2));
        let in_flight = submit(&group, 1).await;
        until_batches(&recorder, 1).await;
        let queued = [submit(&group, 2).await, submit(&group, 3).await];
        assert_eq!(group.submit(4).await, Err(Refused::Full(2)));
        recorder.gate.add_permits(2);
        assert_eq!(in_flight.await.unwrap(), Ok(2));
        for task in queued {
            task.await.unwrap().expect("an outcome");
        }
        assert_eq!(batches(&recorder), [vec![1], vec![2, 3]]);
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_still_gets_its_write_flushed() {
        let (group, recorder) = group(limits(1, 64, 64));
        let in_flight = submit(&group, 1).await;
        until_batches(&recorder, 1).await;
        let abandoned = submit(&group, 2).await;
        abandoned.abort();
        let _ = abandoned.await;
        recorder.gate.add_permits(2);
        assert_eq!(in_flight.await.unwrap(), Ok(2));
        until_batches(&recorder, 2).await;
        assert_eq!(batches(&recorder), [vec![1], vec![2]]);
    }

    #[tokio::test]
    async fn a_flush_that_panics_loses_its_batch_only() {
        let (group, recorder) = group(limits(1, 2, 64));
        let in_flight = submit(&group, 1).await;
        until_batches(&recorder, 1).await;
        let doomed = [submit(&group, 0).await, submit(&group, 3).await];
        let behind = submit(&group, 4).await;
        recorder.gate.add_permits(3);
        assert_eq!(in_flight.await.unwrap(), Ok(2));
        for task in doomed {
            assert_eq!(task.await.unwrap(), Err(Refused::Lost));
        }
        assert_eq!(
            behind.await.unwrap(),
            Ok(8),
            "the write queued behind the panic is flushed"
        );
        assert_eq!(batches(&recorder), [vec![1], vec![0, 3], vec![4]]);
        recorder.gate.add_permits(1);
        assert_eq!(group.submit(5).await, Ok(10), "and later writes find a flush");
    }
}
