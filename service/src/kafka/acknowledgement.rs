//! What `handle()`, `commit()` and `close()` send to the poll thread.
//!
//! The poll thread owns the librdkafka consumer and the per-partition offset bookkeeping; nothing else
//! touches them. Every other party talks to it through one channel of [`Request`]s. One channel, not
//! one per kind, so that order is kept: acknowledgements sent before a `commit()` are applied before
//! that commit, and a `close()` commits everything handled before it.
//!
//! Sending never blocks (the channel is unbounded), so `handle()` is cheap and safe to call from async
//! code. The channel is drained on every turn of the poll loop (at least every 100 ms) and inside the
//! rebalance callback, before revoked partitions are committed.

use std::sync::Arc;
use std::sync::mpsc::Sender;

use tokio::sync::oneshot;

use super::error::ConsumerError;
use super::offsets::Epoch;

/// A request to the poll thread.
#[derive(Debug)]
pub(crate) enum Request {
    /// A message was handled.
    Handled(Handled),
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

/// What the messages of one batch share: the way to the poll thread, and the topic they came from.
///
/// One reference count per batch, not one per message: the poll thread takes the references and the
/// reader drops them, on two cores at once. Counters touched per message by both (a `Sender` clone and
/// an `Arc<str>` clone in every message) would bounce their cache lines between the cores hundreds of
/// thousands of times a second; a batch's own counter is touched by one side at a time.
#[derive(Debug)]
pub(crate) struct BatchShared {
    requests: Sender<Request>,
    topic: Arc<str>,
}

impl BatchShared {
    pub fn new(requests: Sender<Request>, topic: Arc<str>) -> Arc<Self> {
        Arc::new(Self { requests, topic })
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

    pub fn acknowledge(&self) {
        // A send fails only once the consumer is closed: then there is nothing left to acknowledge to,
        // and the message will be re-read by whoever consumes the partition next.
        let _ = self.batch.requests.send(Request::Handled(self.handled));
    }
}
