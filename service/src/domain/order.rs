//! `Order` as stored and served, and `NewOrder`: a create request that passed every check.

use chrono::{DateTime, Utc};

use super::money::{Money, MoneyError};
use super::order_id::OrderId;
use super::status::OrderStatus;

pub const MAX_ITEMS: usize = 1000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    pub sku_id: i64,
    pub quantity: i32,
    pub price: Money,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub client_id: i64,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub amount: Money,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One item of a create request, as received: `price` is `(currency_code, units, nanos)` or absent.
#[derive(Debug, Clone)]
pub struct ItemInput {
    pub sku_id: i64,
    pub quantity: i32,
    pub price: Option<(String, i64, i32)>,
}

/// A valid order to create: positive ids, at least one item, positive quantities, non-negative prices in
/// one currency, and a total that fits `google.type.Money`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub client_id: i64,
    pub items: Vec<OrderItem>,
    pub amount: Money,
    pub idempotency_key: Option<String>,
}

/// Why a create request is invalid; the message names the field, as a client would write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewOrderError {
    #[error("client_id must be positive, got {0}")]
    ClientId(i64),
    #[error("items must hold at least one item")]
    NoItems,
    #[error("items may hold at most {MAX_ITEMS} items, got {0}")]
    TooManyItems(usize),
    #[error("items[{index}].sku_id must be positive, got {sku_id}")]
    SkuId { index: usize, sku_id: i64 },
    #[error("items[{index}].quantity must be at least 1, got {quantity}")]
    Quantity { index: usize, quantity: i32 },
    #[error("items[{index}].price is required")]
    MissingPrice { index: usize },
    #[error("items[{index}].price {source}")]
    Price { index: usize, source: MoneyError },
    #[error("items[{index}].price.currency_code {found:?} differs from the order's currency {expected:?}")]
    MixedCurrencies {
        index: usize,
        expected: String,
        found: String,
    },
    #[error("the order's amount (sum of quantity * price) is too large")]
    AmountOverflow,
    #[error("idempotency_key may be at most {MAX_IDEMPOTENCY_KEY_LEN} bytes, got {0}")]
    IdempotencyKeyTooLong(usize),
}

impl NewOrder {
    pub fn parse(
        client_id: i64,
        items: Vec<ItemInput>,
        idempotency_key: &str,
    ) -> Result<Self, NewOrderError> {
        if client_id <= 0 {
            return Err(NewOrderError::ClientId(client_id));
        }
        if items.is_empty() {
            return Err(NewOrderError::NoItems);
        }
        if items.len() > MAX_ITEMS {
            return Err(NewOrderError::TooManyItems(items.len()));
        }
        if idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(NewOrderError::IdempotencyKeyTooLong(idempotency_key.len()));
        }
        let mut parsed = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            if item.sku_id <= 0 {
                return Err(NewOrderError::SkuId {
                    index,
                    sku_id: item.sku_id,
                });
            }
            if item.quantity <= 0 {
                return Err(NewOrderError::Quantity {
                    index,
                    quantity: item.quantity,
                });
            }
            let (currency, units, nanos) = item.price.ok_or(NewOrderError::MissingPrice { index })?;
            let price = Money::parse(&currency, units, nanos)
                .map_err(|source| NewOrderError::Price { index, source })?;
            if price.is_negative() {
                return Err(NewOrderError::Price {
                    index,
                    source: MoneyError::Negative,
                });
            }
            if let Some(first) = parsed.first().map(|first: &OrderItem| first.price.currency())
                && first != price.currency()
            {
                return Err(NewOrderError::MixedCurrencies {
                    index,
                    expected: first.as_str().to_string(),
                    found: price.currency().as_str().to_string(),
                });
            }
            parsed.push(OrderItem {
                sku_id: item.sku_id,
                quantity: item.quantity,
                price,
            });
        }
        let amount = total(&parsed).ok_or(NewOrderError::AmountOverflow)?;
        Ok(Self {
            client_id,
            items: parsed,
            amount,
            idempotency_key: (!idempotency_key.is_empty()).then(|| idempotency_key.to_string()),
        })
    }
}

/// Sum of quantity * price; `None` if it does not fit.
fn total(items: &[OrderItem]) -> Option<Money> {
    let currency = items.first()?.price.currency().clone();
    items.iter().try_fold(Money::zero(currency), |sum, item| {
        sum.plus(&item.price.times(item.quantity).ok()?).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku_id: i64, quantity: i32, price: (&str, i64, i32)) -> ItemInput {
        ItemInput {
            sku_id,
            quantity,
            price: Some((price.0.to_string(), price.1, price.2)),
        }
    }

    #[test]
    fn a_valid_order_gets_its_exact_total() {
        let order = NewOrder::parse(
            7,
            vec![
                item(1, 2, ("EUR", 1, 500_000_000)),
                item(2, 1, ("EUR", 0, 250_000_000)),
            ],
            "key-1",
        )
        .unwrap();
        assert_eq!(order.amount.parts(), ("EUR", 3, 250_000_000));
        assert_eq!(order.idempotency_key.as_deref(), Some("key-1"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(NewOrderError, i64, Vec<ItemInput>)> = vec![
            (NewOrderError::ClientId(0), 0, vec![item(1, 1, ("EUR", 1, 0))]),
            (NewOrderError::NoItems, 1, vec![]),
            (
                NewOrderError::Quantity {
                    index: 0,
                    quantity: 0,
                },
                1,
                vec![item(1, 0, ("EUR", 1, 0))],
            ),
            (
                NewOrderError::SkuId { index: 0, sku_id: -1 },
                1,
                vec![item(-1, 1, ("EUR", 1, 0))],
            ),
            (
                NewOrderError::Price {
                    index: 1,
                    source: MoneyError::Negative,
                },
                1,
                vec![item(1, 1, ("EUR", 1, 0)), item(2, 1, ("EUR", -1, 0))],
            ),
            (
                NewOrderError::MixedCurrencies {
                    index: 1,
                    expected: "EUR".into(),
                    found: "USD".into(),
                },
                1,
                vec![item(1, 1, ("EUR", 1, 0)), item(2, 1, ("USD", 1, 0))],
            ),
            (
                NewOrderError::AmountOverflow,
                1,
                vec![item(1, i32::MAX, ("EUR", i64::MAX / 2, 0))],
            ),
        ];
        for (expected, client_id, items) in cases {
            assert_eq!(NewOrder::parse(client_id, items, ""), Err(expected));
        }
        let missing = ItemInput {
            sku_id: 1,
            quantity: 1,
            price: None,
        };
        assert_eq!(
            NewOrder::parse(1, vec![missing], "").unwrap_err().to_string(),
            "items[0].price is required"
        );
    }
}
