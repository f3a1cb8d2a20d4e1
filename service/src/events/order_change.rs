//! What the cache updater reads from a message of `order-events`: the order an `OrderEvent` carries, or
//! why the message carries none it could cache.
//!
//! Validation happens in the consumer's deserializer, not in the updater's loop, so that a message the
//! updater cannot use is an [`UndecodableMessage`](crate::kafka::UndecodableMessage) like any other
//! poison: it keeps the bytes and headers it arrived with, and the dead-letter topic gets exactly those,
//! not a re-encoding of what was decoded.

use crate::kafka::{DeserializeError, Deserializer};
use crate::proto::orders::v1 as pb;

/// Why a well-formed `OrderEvent` is still no use to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("an OrderEvent without an order")]
    NoOrder,
    #[error("an OrderEvent whose order id {0} is not positive")]
    OrderId(i64),
    #[error("an OrderEvent whose version {0} is not positive")]
    Version(i64),
}

/// Reads an `OrderEvent` and keeps its order, refusing one without an order, or with an id or a version
/// that no stored order has (both start at 1).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderChanges;

impl Deserializer<pb::Order> for OrderChanges {
    fn deserialize(&self, data: Option<&[u8]>) -> Result<pb::Order, DeserializeError> {
        let bytes = data.ok_or(DeserializeError::Null)?;
        let event = <pb::OrderEvent as prost::Message>::decode(bytes)?;
        valid_order(event).map_err(|invalid| DeserializeError::Custom(Box::new(invalid)))
    }
}

fn valid_order(event: pb::OrderEvent) -> Result<pb::Order, InvalidEvent> {
    let order = event.order.ok_or(InvalidEvent::NoOrder)?;
    if order.order_id <= 0 {
        return Err(InvalidEvent::OrderId(order.order_id));
    }
    if order.version <= 0 {
        return Err(InvalidEvent::Version(order.version));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn event(order: Option<pb::Order>) -> Vec<u8> {
        pb::OrderEvent {
            order,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn order(order_id: i64, version: i64) -> pb::Order {
        pb::Order {
            order_id,
            version,
            ..Default::default()
        }
    }

    fn invalid(data: Option<&[u8]>) -> String {
        OrderChanges.deserialize(data).expect_err("refused").to_string()
    }

    #[test]
    fn an_event_with_a_valid_order_yields_that_order() {
        let decoded = OrderChanges.deserialize(Some(&event(Some(order(7, 3)))));
        assert_eq!(decoded.expect("valid"), order(7, 3));
    }

    #[test]
    fn an_event_without_a_usable_order_is_refused_with_the_reason() {
        assert_eq!(invalid(Some(&event(None))), "an OrderEvent without an order");
        assert_eq!(
            invalid(Some(&event(Some(order(0, 1))))),
            "an OrderEvent whose order id 0 is not positive"
        );
        assert_eq!(
            invalid(Some(&event(Some(order(7, 0))))),
            "an OrderEvent whose version 0 is not positive"
        );
    }

    #[test]
    fn bytes_that_are_no_order_event_and_tombstones_are_refused() {
        assert!(invalid(Some(b"\xff\xfe not protobuf")).starts_with("invalid protobuf message"));
        assert_eq!(invalid(None), "null where a value was expected");
    }
}
