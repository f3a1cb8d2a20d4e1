//! What one cache key holds: an order's entry, `{version}:{orders.v1.Order protobuf bytes}`, or a
//! reader's lease, `lease:{token}` (see the [protocol](super)).
//!
//! The version comes first, in decimal, so that the Lua scripts can compare versions without decoding
//! protobuf.

use prost::Message;

use crate::proto::orders::v1 as pb;

/// The key of an order's entry.
pub fn key(order_id: i64) -> String {
    format!("order:{order_id}")
}

/// The prefix of a lease value. A real entry starts with a digit, so the two never mix.
pub const LEASE_PREFIX: &str = "lease:";

/// What the cache holds for one order, as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    Hit(pb::Order),
    /// Nothing, or a lease (a reader is filling the entry): either way the database answers.
    Miss,
    /// Something that is neither an entry nor a lease: treated as a miss, and replaced.
    Corrupt(Vec<u8>),
}

/// A reader's right to fill one missing entry (memcache's lease token). It holds only while the key
/// holds exactly this token: any newer write, and the loss of the key, revoke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease(String);

impl Lease {
    /// A new, unguessable token (128 random bits).
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn token(&self) -> &str {
        &self.0
    }
}

impl Default for Lease {
    fn default() -> Self {
        Self::new()
    }
}

pub fn encode(order: &pb::Order) -> Vec<u8> {
    let mut value = format!("{}:", order.version).into_bytes();
    // Encoding into a Vec cannot fail: it only fails for lack of room in a fixed buffer.
    order.encode(&mut value).unwrap_or_default();
    value
}

/// The version an entry announces, from its prefix alone (what the scripts compare); `None` for a
/// lease or anything unreadable.
pub fn version(value: &[u8]) -> Option<i64> {
    let colon = value.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&value[..colon]).ok()?.parse().ok()
}

pub fn decode(value: Option<Vec<u8>>) -> Cached {
    let Some(value) = value else { return Cached::Miss };
    if value.starts_with(LEASE_PREFIX.as_bytes()) {
        return Cached::Miss;
    }
    let parsed = version(&value).and_then(|version| {
        let colon = value.iter().position(|&b| b == b':')?;
        let order = pb::Order::decode(&value[colon + 1..]).ok()?;
        (order.version == version && order.order_id > 0).then_some(order)
    });
    match parsed {
        Some(order) => Cached::Hit(order),
        None => Cached::Corrupt(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_corrupt() {
        let order = pb::Order {
            order_id: 7,
            version: 3,
            ..Default::default()
        };
        assert_eq!(decode(Some(encode(&order))), Cached::Hit(order));
        assert_eq!(decode(None), Cached::Miss);
        assert!(matches!(decode(Some(b"garbage".to_vec())), Cached::Corrupt(_)));
        assert!(matches!(decode(Some(b"3:\xff\xff".to_vec())), Cached::Corrupt(_)));
        assert!(
            matches!(decode(Some(b"4:".to_vec())), Cached::Corrupt(_)),
            "version must match"
        );
        let mut mislabelled = b"5:".to_vec();
        mislabelled.extend(
            encode(&pb::Order {
                order_id: 7,
                version: 3,
                ..Default::default()
            })[2..]
                .iter(),
        );
        assert!(
            matches!(decode(Some(mislabelled)), Cached::Corrupt(_)),
            "a prefix that is not the order's version"
        );
        assert!(
            matches!(decode(Some(b"0:".to_vec())), Cached::Corrupt(_)),
            "an order without an id (version 0 matches the empty order's)"
        );
    }

    #[test]
    fn a_lease_reads_as_a_miss_and_has_no_version() {
        let lease = format!("{LEASE_PREFIX}{}", Lease::new().token()).into_bytes();
        assert_eq!(decode(Some(lease.clone())), Cached::Miss);
        assert_eq!(version(&lease), None);
        assert_eq!(version(b"12:rest"), Some(12));
    }

    #[test]
    fn the_key_names_the_order() {
        assert_eq!(key(258), "order:258");
    }

    #[test]
    fn leases_are_distinct() {
        assert_ne!(Lease::new(), Lease::new());
        assert_eq!(Lease::new().token().len(), 32);
    }
}
