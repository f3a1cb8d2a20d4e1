//! `OrderStatus` and its state machine.
//!
//! ```text
//! CREATED -> PAID -> BOXING -> WAIT_FOR_PICKUP -> IN_DELIVERY -> WAIT_FOR_CLIENT -> COMPLETED
//!    \---------\--------\-------------\----------------\--------------\--> CANCELLED
//! ```
//!
//! One step forward along the line, or `CANCELLED` from any status before `COMPLETED`. `COMPLETED` and
//! `CANCELLED` are final. Setting the current status again is not a transition: the caller treats it as
//! an idempotent no-op.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderStatus {
    Created,
    Paid,
    Boxing,
    WaitForPickup,
    InDelivery,
    WaitForClient,
    Completed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("status must be set (ORDER_STATUS_UNSPECIFIED is not a status)")]
    Unspecified,
    #[error("unknown status value {0}")]
    Unknown(i32),
    #[error("unknown status name {0:?}")]
    UnknownName(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 8] = [
        Self::Created,
        Self::Paid,
        Self::Boxing,
        Self::WaitForPickup,
        Self::InDelivery,
        Self::WaitForClient,
        Self::Completed,
        Self::Cancelled,
    ];

    /// From the wire value of `orders.v1.OrderStatus`.
    pub fn from_proto(value: i32) -> Result<Self, StatusError> {
        match value {
            0 => Err(StatusError::Unspecified),
            1..=8 => Ok(Self::ALL[value as usize - 1]),
            other => Err(StatusError::Unknown(other)),
        }
    }

    pub fn to_proto(self) -> i32 {
        self as i32 + 1
    }

    /// The name stored in the database (`orders.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Paid => "PAID",
            Self::Boxing => "BOXING",
            Self::WaitForPickup => "WAIT_FOR_PICKUP",
            Self::InDelivery => "IN_DELIVERY",
            Self::WaitForClient => "WAIT_FOR_CLIENT",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse_name(name: &str) -> Result<Self, StatusError> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
            .ok_or_else(|| StatusError::UnknownName(name.to_string()))
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// The status one step forward, if any.
    pub fn next(self) -> Option<Self> {
        match self {
            Self::Created => Some(Self::Paid),
            Self::Paid => Some(Self::Boxing),
            Self::Boxing => Some(Self::WaitForPickup),
            Self::WaitForPickup => Some(Self::InDelivery),
            Self::InDelivery => Some(Self::WaitForClient),
            Self::WaitForClient => Some(Self::Completed),
            Self::Completed | Self::Cancelled => None,
        }
    }

    /// Whether `self -> to` is a transition (a change; the same status is not one).
    pub fn can_become(self, to: Self) -> bool {
        self.next() == Some(to) || (to == Self::Cancelled && !self.is_final())
    }

    /// `Ok(true)`: a change to apply; `Ok(false)`: already there, nothing to do; `Err`: illegal.
    pub fn check_transition(self, to: Self) -> Result<bool, TransitionError> {
        if self == to {
            Ok(false)
        } else if self.can_become(to) {
            Ok(true)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    #[test]
    fn proto_values_round_trip_and_reject_unknowns() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::from_proto(status.to_proto()), Ok(status));
            assert_eq!(OrderStatus::parse_name(status.as_str()), Ok(status));
        }
        assert_eq!(OrderStatus::from_proto(0), Err(StatusError::Unspecified));
        assert_eq!(OrderStatus::from_proto(9), Err(StatusError::Unknown(9)));
        assert_eq!(OrderStatus::from_proto(-1), Err(StatusError::Unknown(-1)));
    }

    #[test]
    fn the_line_moves_one_step_forward_only() {
        assert!(Created.can_become(Paid));
        assert!(WaitForClient.can_become(Completed));
        assert!(!Created.can_become(Boxing), "no skipping");
        assert!(!Paid.can_become(Created), "no going back");
    }

    #[test]
    fn cancel_is_allowed_before_completion_only() {
        for status in [Created, Paid, Boxing, WaitForPickup, InDelivery, WaitForClient] {
            assert!(status.can_become(Cancelled), "{status} -> CANCELLED");
        }
        assert!(!Completed.can_become(Cancelled));
    }

    #[test]
    fn final_statuses_go_nowhere() {
        for to in OrderStatus::ALL {
            assert!(!Completed.can_become(to));
            assert!(!Cancelled.can_become(to));
        }
    }

    #[test]
    fn the_same_status_is_a_no_op_and_illegal_moves_name_both_ends() {
        assert_eq!(Paid.check_transition(Paid), Ok(false));
        assert_eq!(Paid.check_transition(Boxing), Ok(true));
        let error = Paid.check_transition(Completed).unwrap_err();
        assert_eq!(error.to_string(), "an order cannot go from PAID to COMPLETED");
    }
}
