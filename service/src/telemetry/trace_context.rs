//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` that follows one write
//! from its RPC, through the outbox row and the Kafka message's headers, to the cache updater's Redis
//! write, so that its trace id finds it in the logs of the API, the relay and the updater.
//!
//! The API continues a client's `traceparent` (a new span of the client's trace) or starts a trace if
//! the client sent none, or one that does not parse, as the specification asks: a bad header restarts
//! the trace, it does not fail the request.

use std::fmt;

/// The gRPC metadata key and Kafka header name.
pub const TRACEPARENT: &str = "traceparent";

/// A `traceparent`: version `00`, a trace id, the id of the span that sent it, and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

/// A trace id, shown as 32 lowercase hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("expected version-traceid-parentid-flags, 55 characters, got {0} characters")]
    Length(usize),
    #[error("only version 00 is understood")]
    Version,
    #[error("the {0} is not lowercase hexadecimal of the right length")]
    Field(&'static str),
    #[error("the {0} is all zeros")]
    Zero(&'static str),
}

impl TraceParent {
    /// The start of a trace: random trace and span ids, sampled.
    pub fn root() -> Self {
        Self {
            trace_id: nonzero(rand::random()),
            parent_id: nonzero(rand::random()),
            flags: 0x01,
        }
    }

    /// A new span of the same trace (what a service passes on after it received `self`).
    pub fn child(self) -> Self {
        Self {
            parent_id: nonzero(rand::random()),
            ..self
        }
    }

    /// A header's value: continued if it parses, a new trace if it is absent or does not.
    pub fn continue_or_start(header: Option<&str>) -> Self {
        header
            .and_then(|value| Self::parse(value).ok())
            .map_or_else(Self::root, Self::child)
    }

    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let fields: Vec<&str> = value.split('-').collect();
        let [version, trace_id, parent_id, flags] = fields[..] else {
            return Err(TraceParentError::Length(value.len()));
        };
        if value.len() != 55 {
            return Err(TraceParentError::Length(value.len()));
        }
        if version != "00" {
            return Err(TraceParentError::Version);
        }
        let trace_id = hex::<u128>(trace_id, 32, "trace id", u128::from_str_radix)?;
        let parent_id = hex::<u64>(parent_id, 16, "parent id", u64::from_str_radix)?;
        let flags = hex::<u8>(flags, 2, "flags", u8::from_str_radix)?;
        if trace_id == 0 {
            return Err(TraceParentError::Zero("trace id"));
        }
        if parent_id == 0 {
            return Err(TraceParentError::Zero("parent id"));
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }
}

/// The trace id of a `traceparent` header's value (the bytes of a Kafka header, a stored column), if it
/// parses: for logs.
pub fn trace_id_of(value: &[u8]) -> Option<TraceId> {
    let value = std::str::from_utf8(value).ok()?;
    Some(TraceParent::parse(value).ok()?.trace_id())
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

fn hex<T>(
    field: &str,
    digits: usize,
    name: &'static str,
    parse: fn(&str, u32) -> Result<T, std::num::ParseIntError>,
) -> Result<T, TraceParentError> {
    let lowercase_hex =
        field.len() == digits && field.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lowercase_hex {
        return Err(TraceParentError::Field(name));
    }
    parse(field, 16).map_err(|_| TraceParentError::Field(name))
}

/// Ids must not be all zeros; a random zero (odds 2^-64 at worst) becomes one.
fn nonzero<T: PartialEq + From<u8>>(id: T) -> T {
    if id == T::from(0) { T::from(1) } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(parsed.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_a_span_of_its_own() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        let child = TraceParent::continue_or_start(Some(EXAMPLE));
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child, parent);
        assert_eq!(TraceParent::parse(&child.to_string()), Ok(child));
    }

    #[test]
    fn an_absent_or_invalid_header_starts_a_new_trace() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        for header in [None, Some("garbage"), Some(&EXAMPLE.to_uppercase()[..])] {
            let started = TraceParent::continue_or_start(header);
            assert_ne!(started.trace_id(), parent.trace_id(), "{header:?}");
            assert_eq!(TraceParent::parse(&started.to_string()), Ok(started));
        }
    }

    #[test]
    fn invalid_headers_say_what_is_wrong() {
        let cases = [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                TraceParentError::Length(52),
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Version,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::Field("trace id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01",
                TraceParentError::Field("parent id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                TraceParentError::Field("flags"),
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::Zero("trace id"),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::Zero("parent id"),
            ),
            (
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Field("trace id"),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(TraceParent::parse(header), Err(expected), "{header}");
        }
    }
}
