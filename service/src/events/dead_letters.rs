//! The dead-letter topic: where the cache updater sets aside a message it cannot use, with the key, value
//! and headers it arrived with, plus headers that say where it came from and why it was set aside.
//!
//! # Guarantees
//!
//! - A poison message is handled (its offset may be committed) only once the dead-letter topic
//!   acknowledged its copy: a crash before that makes it come again, never go missing.
//! - Sending runs beside the updater's loop, not in it. A dead-letter topic that cannot be reached holds
//!   back the committed offset of the poison message's partition only (offsets are committed up to the
//!   first unhandled message); the events behind it, and every other partition's, are still applied.
//! - Bounded: after [`ATTEMPTS`] failed attempts a message is *parked* (an error log, and the gauge
//!   `orders_updater_dead_letters_parked`) and tried again once a minute rather than in a tight loop; and
//!   the updater takes no new batch while [`MAX_PENDING`] messages wait here.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::backoff::Backoff;
use crate::kafka::UndecodableMessage;
use crate::telemetry::ErrorChain;
use crate::telemetry::metrics;

/// Attempts in quick succession (with back-off) before a message is parked.
pub const ATTEMPTS: u32 = 3;

/// How often a parked message is tried again.
const PARKED_RETRY: Duration = Duration::from_secs(60);

/// Messages waiting to be dead-lettered beyond which the updater stops taking batches.
pub const MAX_PENDING: usize = 1000;

/// How long a send waits for room in the producer's queue (a full queue is an attempt that failed).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// The poison messages being set aside, each with its attempt in flight.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: Arc<str>,
    attempts: FuturesUnordered<BoxFuture<'static, Attempt>>,
    parked: usize,
}

/// One try at publishing a poison message's copy, and how it went.
struct Attempt {
    poison: Box<UndecodableMessage>,
    number: u32,
    result: Result<(), KafkaError>,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        Self {
            producer,
            topic: topic.into(),
            attempts: FuturesUnordered::new(),
            parked: 0,
        }
    }

    /// Messages not yet acknowledged by the dead-letter topic.
    pub fn pending(&self) -> usize {
        self.attempts.len()
    }

    /// Whether the updater should wait for these before it takes another batch.
    pub fn is_full(&self) -> bool {
        self.pending() >= MAX_PENDING
    }

    /// Starts setting `poison` aside; [`settle_next`](Self::settle_next) finishes the job.
    pub fn submit(&mut self, poison: Box<UndecodableMessage>) {
        tracing::warn!(
            topic = poison.topic(),
            partition = poison.partition(),
            offset = poison.offset(),
            reason = %ErrorChain(poison.deserialize_error()),
            "dead-lettering an unusable event"
        );
        self.attempt(poison, 1, Duration::ZERO);
    }

    /// Waits until an attempt in flight ends: its message is handled if the dead-letter topic took it,
    /// or tried again later. Never returns while nothing is in flight (for `select!`).
    pub async fn settle_next(&mut self) {
        let Some(Attempt {
            poison,
            number,
            result,
        }) = self.attempts.next().await
        else {
            return std::future::pending().await;
        };
        match result {
            Ok(()) => {
                if number > ATTEMPTS {
                    self.parked -= 1;
                    metrics::updater_dead_letters_parked(self.parked);
                }
                poison.handle();
                metrics::updater_events("dead_lettered", 1);
            }
            Err(error) if number < ATTEMPTS => {
                tracing::warn!(error = %ErrorChain(&error), attempt = number, "dead-letter publish failed; retrying");
                self.attempt(poison, number + 1, retry_delay(number));
            }
            Err(error) => {
                if number == ATTEMPTS {
                    self.parked += 1;
                    metrics::updater_dead_letters_parked(self.parked);
                    tracing::error!(
                        error = %ErrorChain(&error),
                        topic = poison.topic(),
                        partition = poison.partition(),
                        offset = poison.offset(),
                        "the dead-letter topic refused an event {ATTEMPTS} times: parked, its partition's \
                         commits wait for it; trying again every {PARKED_RETRY:?}"
                    );
                }
                self.attempt(poison, number + 1, PARKED_RETRY);
            }
        }
    }

    /// Tries to publish `poison`'s copy after `delay`.
    fn attempt(&mut self, poison: Box<UndecodableMessage>, number: u32, delay: Duration) {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        self.attempts.push(
            async move {
                tokio::time::sleep(delay).await;
                let result = producer
                    .send(copy(&topic, &poison), QUEUE_TIMEOUT)
                    .await
                    .map(drop)
                    .map_err(|(error, _)| error);
                Attempt {
                    poison,
                    number,
                    result,
                }
            }
            .boxed(),
        );
    }
}

/// The back-off after `failed` attempts: [`Backoff`]'s sequence.
fn retry_delay(failed: u32) -> Duration {
    let mut backoff = Backoff::default();
    for _ in 1..failed {
        backoff.next_delay();
    }
    backoff.next_delay()
}

/// The record that sets `poison` aside: its key, value and headers as received, then `source_topic`,
/// `source_partition`, `source_offset` and `error`.
fn copy<'a>(topic: &'a str, poison: &'a UndecodableMessage) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    for header in poison.headers().into_iter().flat_map(|headers| headers.iter()) {
        headers = headers.insert(header);
    }
    let reason = format!(
        "{} {}",
        poison.failed_part(),
        ErrorChain(poison.deserialize_error())
    );
    let headers = headers
        .insert(Header {
            key: "source_topic",
            value: Some(poison.topic()),
        })
        .insert(Header {
            key: "source_partition",
            value: Some(&poison.partition().to_string()),
        })
        .insert(Header {
            key: "source_offset",
            value: Some(&poison.offset().to_string()),
        })
        .insert(Header {
            key: "error",
            value: Some(&reason),
        });
    let mut record = FutureRecord::to(topic).headers(headers);
    if let Some(key) = poison.raw_key() {
        record = record.key(key);
    }
    if let Some(value) = poison.raw_value() {
        record = record.payload(value);
    }
    record
}
