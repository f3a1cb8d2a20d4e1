//! Broken: commit, then produce. The naive design publishes an event after the transaction that
//! changed the order committed; here a relay does the same with the outbox: it deletes the rows and
//! commits *before* it hands their events to the producer, without waiting for the broker. From the
//! commit on, an event lives only in this process's memory: a crash, or a Kafka outage longer than
//! the producer's message timeout, loses it.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use service::events::EVENT_ID_HEADER;
use service::storage::{Storage, StorageError, outbox};
use service::telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;

/// How often the relay looks at the outbox.
const POLL: Duration = Duration::from_millis(20);

pub struct DeleteThenPublish {
    pub storage: Storage,
    pub producer: FutureProducer,
    pub topic: String,
}

impl DeleteThenPublish {
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(error) = self.round().await {
                tracing::warn!(error = %ErrorChain(&error), "relay round failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn round(&self) -> Result<(), StorageError> {
        let Some(mut transaction) = outbox::begin_round(self.storage.pool()).await? else {
            return Ok(());
        };
        let events = outbox::oldest(&mut transaction, 500).await?;
        let ids: Vec<i64> = events.iter().map(|event| event.id).collect();
        outbox::delete(&mut transaction, &ids).await?;
        transaction.commit().await.map_err(StorageError::from)?;
        for event in events {
            let key = event.order_id.to_key();
            let event_id = event.event_id.to_string();
            let record = FutureRecord::to(&self.topic)
                .key(&key[..])
                .payload(&event.payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(&event_id),
                }));
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let order_id = event.order_id;
                    tokio::spawn(async move {
                        if !matches!(delivery.await, Ok(Ok(_))) {
                            tracing::warn!(%order_id, "event lost: produce after commit failed");
                        }
                    });
                }
                Err((error, _)) => {
                    tracing::warn!(error = %ErrorChain(&error), order_id = %event.order_id, "event lost: produce after commit failed")
                }
            }
        }
        Ok(())
    }
}
