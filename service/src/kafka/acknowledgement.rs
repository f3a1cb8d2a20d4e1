//! What `handle()`, `commit()` and `close()` send to the poll thread.
//!
//! The poll thread owns the librdkafka consumer and the per-partition offset bookkeeping; nothing else
//! touches them. `commit()` and `close()` reach it through a channel of [`Request`]s; `handle()` leaves
//! its acknowledgement in an [`Inbox`], which the poll thread empties in one go. The poll thread reads
//! the channel first and the inbox after, so every acknowledgement left before a `commit()` (or a
//! `close()`) is applied before it: the request's arrival through the channel makes what its sender
//! did before visible.
//!
//! Neither blocks for long, so `handle()` is cheap and safe to call from async code. Both are emptied
//! on every turn of the poll loop (at least every 100 ms) and inside the rebalance callback, before
//! revoked partitions are committed.

use std::sync::{Arc, Mutex, PoisonError};

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

/// Where `handle()` leaves acknowledgements: a vector behind a lock, which the poll thread takes whole.
///
/// Why not the request channel: it cost a channel send per message on the reader's side and a receive
/// per message on the poll thread's, which is the consumer's narrow point (a 12-partition drain: the
/// receives alone were 3% of the poll thread's samples). Here a message costs an uncontended lock and
/// a push, and the poll thread one lock a turn.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    handled: Mutex<Vec<Handled>>,
}

impl Inbox {
    fn push(&self, handled: Handled) {
        self.handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handled);
    }

    /// Swaps what was left for `spare` (empty, with the capacity of earlier turns), so that neither side
    /// allocates in the steady state.
    pub fn take(&self, spare: &mut Vec<Handled>) {
        spare.clear();
        std::mem::swap(
            &mut *self.handled.lock().unwrap_or_else(PoisonError::into_inner),
            spare,
        );
    }
}

/// What the messages of one batch share: the way to the poll thread, and the topic they came from.
///
/// One reference count per batch, not one per message: the poll thread takes the references and the
/// reader drops them, on two cores at once. Counters touched per message by both (a `Sender` clone and
/// an `Arc<str>` clone in every message) would bounce their cache lines between the cores hundreds of
/// thousands of times a second; a batch's own counter is touched by one side at a time.
#[derive(Debug)]
pub(crate) struct BatchShared {
    inbox: Arc<Inbox>,
    topic: Arc<str>,
}

impl BatchShared {
    pub fn new(inbox: Arc<Inbox>, topic: Arc<str>) -> Arc<Self> {
        Arc::new(Self { inbox, topic })
    }
}

/// The token a delivered message carries to acknowledge itself.
///
/// Acknowledging twice is harmless (the second is ignored), and so is acknowledging after the partition
/// was revoked: the epoch no longer matches, and the new owner of the partition re-reads the message.
#[derive(Debug, Clone)]
pub(crate) struct Acknowledgement {
    batch: Arc<BatchShared>,
    handled: Handled,
}

impl Acknowledgement {
    pub fn new(batch: Arc<BatchShared>, partition: i32, offset: i64, epoch: Epoch) -> Self {
        Self {
            batch,
            handled: Handled {
                partition,
                offset,
                epoch,
            },
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.handled.epoch
    }

    /// The topic of the message.
    pub fn topic(&self) -> &str {
        &self.batch.topic
    }

    /// Once the consumer is closed nothing reads the inbox: the message is then re-read by whoever
    /// consumes the partition next.
    pub fn acknowledge(&self) {
        self.batch.inbox.push(self.handled);
    }
}
