//! Errors to gRPC statuses: the right code, and a message that names the problem (never internals).

use tonic::Status;

use crate::domain::{NewOrderError, OrderIdError, StatusError};
use crate::storage::group_commit::Refused;
use crate::storage::{CreateError, StorageError, UpdateError};
use crate::telemetry::ErrorChain;

pub fn invalid_order_id(field: &str, error: OrderIdError) -> Status {
    Status::invalid_argument(format!("{field} {error}"))
}

pub fn invalid_status(error: StatusError) -> Status {
    Status::invalid_argument(format!("status: {error}"))
}

pub fn invalid_new_order(error: NewOrderError) -> Status {
    Status::invalid_argument(error.to_string())
}

pub fn storage(error: StorageError) -> Status {
    match error {
        StorageError::Unavailable(_) => {
            tracing::warn!(error = %ErrorChain(&error), "database unavailable");
            Status::unavailable("the database is unavailable; retry later")
        }
        StorageError::Flush(Refused::Full(waiting)) => {
            tracing::warn!(waiting, "write queue full");
            Status::resource_exhausted(format!(
                "{waiting} writes are waiting for the database; retry later"
            ))
        }
        other => {
            tracing::error!(error = %ErrorChain(&other), "database error");
            Status::internal("internal error")
        }
    }
}

pub fn create(error: CreateError) -> Status {
    match error {
        CreateError::KeyReused { .. } => Status::already_exists(error.to_string()),
        CreateError::Storage(error) => storage(error),
    }
}

pub fn update(error: UpdateError) -> Status {
    match error {
        UpdateError::NotFound(id) => Status::not_found(format!("order {id} does not exist")),
        UpdateError::VersionMismatch { .. } | UpdateError::Contended(_) => Status::aborted(error.to_string()),
        UpdateError::Transition(transition) => Status::failed_precondition(transition.to_string()),
        UpdateError::Storage(error) => storage(error),
    }
}
