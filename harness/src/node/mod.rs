//! The orders service as the consistency harness runs it, one process per instance (`orders-node`):
//! the production start-up's own pieces, with one part replaced by a deliberately broken one when a
//! [`Variant`] asks for it. The broken parts live here, in the harness, and plug into the service's
//! seams (the read path's [`ReadThrough`](service::reads::ReadThrough), the updater's
//! [`UpdateCache`](service::events::cache_updater::UpdateCache) and its event stream); the service
//! itself has no switch for them, and its start-up never sees them.

mod cache;
mod relay;

use clap::ValueEnum;
use service::config::{Component, Settings};
use service::events::topics;
use service::reads::OrderReader;
use service::startup::{Application, StartupError, Supervisor};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

pub use cache::{BlindWrite, RawWrite, RawWrites, SLOW_FILL_MAX, SlowFill, UnleasedFill};
pub use relay::DeleteThenPublish;

use crate::consistency::Invariant;

/// Which service a node runs: the correct one, or one with a weak spot of the naive design back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    /// The service as it ships.
    Correct,
    /// Correct, with every fill held back up to 500 ms after its database read: the read-through
    /// race window held open.
    SlowFill,
    /// Broken: the updater writes with a blind `SET`.
    BlindCacheWrite,
    /// Broken: events are produced after the commit, without the outbox's guarantee.
    CommitThenProduce,
    /// Broken: a miss fills with a blind `SET` (slowly).
    BlindFill,
    /// Broken: a miss fills by compare-and-set, without a lease (slowly): the service before leases.
    FillWithoutLease,
    /// Broken: the updater acknowledges each message as it receives it, before writing Redis.
    StoreOnReceipt,
}

impl Variant {
    pub const BROKEN: [Self; 5] = [
        Self::BlindCacheWrite,
        Self::CommitThenProduce,
        Self::BlindFill,
        Self::FillWithoutLease,
        Self::StoreOnReceipt,
    ];

    /// The name on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|value| value.get_name().to_string())
            .unwrap_or_default()
    }

    /// The invariants this variant breaks: the checker must catch it by one of these. Empty for the
    /// correct variants.
    pub fn breaks(self) -> &'static [Invariant] {
        match self {
            Self::Correct | Self::SlowFill => &[],
            Self::BlindCacheWrite => &[Invariant::MonotonicCache],
            Self::CommitThenProduce => &[Invariant::NoLostEvents],
            Self::BlindFill | Self::FillWithoutLease => &[Invariant::MonotonicCache, Invariant::Convergence],
            Self::StoreOnReceipt => &[Invariant::Convergence],
        }
    }

    /// What else may follow from the bug, beside [`breaks`](Self::breaks): an older version written
    /// last, or an event lost, also leaves the cache behind at the end. Any other invariant violated
    /// means something else went wrong.
    pub fn may_also_break(self) -> &'static [Invariant] {
        match self {
            Self::BlindCacheWrite | Self::CommitThenProduce => &[Invariant::Convergence],
            _ => &[],
        }
    }
}

/// Runs one node until `shutdown`: the parts in `components`, as `variant` has them.
pub async fn run(
    settings: Settings,
    components: Vec<Component>,
    variant: Variant,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    let mut app = Application::build(settings, components).await?;
    let mut parts = app.supervisor(shutdown);
    spawn_api(&mut app, &mut parts, variant).await?;
    if app.runs(Component::Relay) {
        spawn_relay(&app, &mut parts, variant)?;
    }
    if app.runs(Component::Updater) {
        spawn_updater(&app, &mut parts, variant).await?;
    }
    parts.wait().await
}

async fn spawn_api(
    app: &mut Application,
    parts: &mut Supervisor,
    variant: Variant,
) -> Result<(), StartupError> {
    let storage = app.storage().clone();
    let cache = app.cache().clone();
    match variant {
        Variant::SlowFill => app.spawn_api(parts, OrderReader::new(storage, SlowFill::new(cache))),
        Variant::BlindFill | Variant::FillWithoutLease => {
            let how = match variant {
                Variant::BlindFill => RawWrite::Blind,
                _ => RawWrite::IfAbsentOrOlder,
            };
            let fill = UnleasedFill::new(cache, raw_writes(app).await?, how);
            app.spawn_api(parts, OrderReader::new(storage, SlowFill::new(fill)));
        }
        _ => app.spawn_api(parts, OrderReader::new(storage, cache)),
    }
    Ok(())
}

fn spawn_relay(app: &Application, parts: &mut Supervisor, variant: Variant) -> Result<(), StartupError> {
    let token = parts.token();
    if variant == Variant::CommitThenProduce {
        let relay = DeleteThenPublish {
            storage: app.storage().clone(),
            producer: topics::producer(&app.settings().kafka_brokers)?,
            topic: app.settings().orders_topic.clone(),
        };
        parts.spawn(Component::Relay, async move {
            relay.run(token).await;
            Ok(())
        });
    } else {
        let relay = app.relay()?;
        parts.spawn(Component::Relay, async move {
            relay.run(token).await;
            Ok(())
        });
    }
    Ok(())
}

async fn spawn_updater(
    app: &Application,
    parts: &mut Supervisor,
    variant: Variant,
) -> Result<(), StartupError> {
    let consumer = app.consumer()?;
    let token = parts.token();
    match variant {
        Variant::BlindCacheWrite => {
            let updater = app.updater(BlindWrite::new(raw_writes(app).await?))?;
            parts.spawn(Component::Updater, async move {
                Ok(updater.run(consumer, token).await?)
            });
        }
        Variant::StoreOnReceipt => {
            let updater = app.updater(app.cache().clone())?;
            // Acknowledged as soon as received: its offset is committed even if the write never
            // happens (a crash, a rebalance while Redis does not answer).
            let events = consumer.map(|item| {
                if let Ok(message) = &item {
                    message.handle();
                }
                item
            });
            parts.spawn(Component::Updater, async move {
                Ok(updater.run(events, token).await?)
            });
        }
        _ => {
            let updater = app.updater(app.cache().clone())?;
            parts.spawn(Component::Updater, async move {
                Ok(updater.run(consumer, token).await?)
            });
        }
    }
    Ok(())
}

async fn raw_writes(app: &Application) -> Result<RawWrites, StartupError> {
    let settings = app.settings();
    Ok(RawWrites::connect(&settings.redis_url, settings.cache_ttl()).await?)
}
