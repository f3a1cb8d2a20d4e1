//! Events of topic `order-events`: what one is, how the outbox relay publishes them, and how the cache
//! updater applies them to Redis.
//!
//! The schema is `orders.v1.OrderEvent` (`proto/orders/v1/events.proto`): the full order after a change,
//! with its version, keyed by the order id as 8 big-endian bytes. A full snapshot with a version makes
//! every event idempotent and order-insensitive for the cache: applying an old or repeated event is a
//! no-op under the version compare-and-set.

pub mod cache_updater;
pub mod dead_letters;
pub mod order_change;
pub mod outbox_relay;
pub mod topics;

use uuid::Uuid;

use crate::domain::Order;
use crate::proto::{self, orders::v1 as pb};

/// The header carrying the event id (Debezium's outbox convention), for deduplication by consumers.
pub const EVENT_ID_HEADER: &str = "event_id";

/// The event announcing `order`'s current version.
pub fn order_event(order: &Order, event_id: Uuid) -> pb::OrderEvent {
    pb::OrderEvent {
        event_id: event_id.to_string(),
        order: Some(pb::Order::from(order)),
        occurred_at: Some(proto::timestamp(order.updated_at)),
    }
}
