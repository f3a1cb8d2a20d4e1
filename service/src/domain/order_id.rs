//! `OrderId`: a positive 64-bit integer (the database's `bigserial`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be positive, got {0}")]
pub struct OrderIdError(pub i64);

impl OrderId {
    pub fn parse(id: i64) -> Result<Self, OrderIdError> {
        if id > 0 {
            Ok(Self(id))
        } else {
            Err(OrderIdError(id))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// The Kafka message key of this order's events: 8 bytes, big-endian.
    pub fn to_key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_ids_parse() {
        assert!(OrderId::parse(1).is_ok());
        assert_eq!(OrderId::parse(0), Err(OrderIdError(0)));
        assert_eq!(OrderId::parse(-5), Err(OrderIdError(-5)));
    }

    #[test]
    fn the_key_is_big_endian() {
        let id = OrderId::parse(0x0102).unwrap();
        assert_eq!(id.to_key(), [0, 0, 0, 0, 0, 0, 1, 2]);
    }
}
