//! The orders domain: values that are valid by construction.
//!
//! Everything that enters from outside (gRPC requests, database rows, Kafka events) is parsed into these
//! types at the edge, so code past the edge never re-checks an id, a status or an amount of money.

mod money;
mod order;
mod order_id;
mod status;

pub use money::{CurrencyCode, Money, MoneyError};
pub use order::{ItemInput, NewOrder, NewOrderError, Order, OrderItem};
pub use order_id::{OrderId, OrderIdError};
pub use status::{OrderStatus, StatusError, TransitionError};
