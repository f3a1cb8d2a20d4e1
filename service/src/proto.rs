//! The generated protobuf and gRPC code (`proto/`), and the conversions from the domain to the wire.

#[allow(clippy::all, missing_docs)]
pub mod google {
    pub mod r#type {
        tonic::include_proto!("google.r#type");
    }
}

#[allow(clippy::all, missing_docs)]
pub mod orders {
    pub mod v1 {
        tonic::include_proto!("orders.v1");
    }
}

/// Every message and service of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("orders_descriptor");

use chrono::{DateTime, Utc};

use crate::domain;
use orders::v1 as pb;

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

pub fn money(money: &domain::Money) -> google::r#type::Money {
    let (currency_code, units, nanos) = money.parts();
    google::r#type::Money {
        currency_code: currency_code.to_string(),
        units,
        nanos,
    }
}

impl From<&domain::Order> for pb::Order {
    fn from(order: &domain::Order) -> Self {
        Self {
            order_id: order.id.get(),
            client_id: order.client_id,
            status: order.status.to_proto(),
            items: order
                .items
                .iter()
                .map(|item| pb::OrderItem {
                    sku_id: item.sku_id,
                    quantity: item.quantity,
                    price: Some(money(&item.price)),
                })
                .collect(),
            amount: Some(money(&order.amount)),
            version: order.version,
            created_at: Some(timestamp(order.created_at)),
            updated_at: Some(timestamp(order.updated_at)),
        }
    }
}

impl From<pb::OrderItem> for domain::ItemInput {
    fn from(item: pb::OrderItem) -> Self {
        Self {
            sku_id: item.sku_id,
            quantity: item.quantity,
            price: item.price.map(|p| (p.currency_code, p.units, p.nanos)),
        }
    }
}
