//! What each goose user keeps between its transactions, its gRPC client, and how a call is timed and
//! recorded in goose's metrics.
//!
//! Each user connects on its own HTTP/2 connection, as independent clients do, so the load spreads
//! over as many connections as there are users. Calls are recorded with
//! `GooseUser::record_custom_request_duration` (`record_custom_request` with microseconds rather than
//! whole milliseconds: a cached read takes well under one), under method `gRPC` and one name per RPC;
//! the gRPC status code is the request's status code, so goose's reports count `0` (OK) and the errors.

use std::future::Future;
use std::time::{Duration, Instant};

use goose::prelude::*;
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use tonic::transport::Channel;

use crate::target;

/// goose's method label for every request.
const METHOD: &str = "gRPC";

/// A goose user's session data.
#[derive(Clone)]
pub struct Session {
    pub client: OrderServiceClient<Channel>,
}

/// The names requests are recorded under: one per RPC, reads split by the state of the cache they
/// aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    GetOrderWarm,
    GetOrderCold,
    GetOrders,
    UpdateOrderStatus,
    CreateOrder,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Self::GetOrderWarm => "GetOrder (warm)",
            Self::GetOrderCold => "GetOrder (cold)",
            Self::GetOrders => "GetOrders",
            Self::UpdateOrderStatus => "UpdateOrderStatus",
            Self::CreateOrder => "CreateOrder",
        }
    }

    /// The name a call the service shed (`RESOURCE_EXHAUSTED`) is recorded under: its own row in goose's
    /// report, so that the latencies of the calls served are not averaged with the quick refusals.
    pub fn shed_name(self) -> &'static str {
        match self {
            Self::GetOrderWarm => "GetOrder (warm), shed",
            Self::GetOrderCold => "GetOrder (cold), shed",
            Self::GetOrders => "GetOrders, shed",
            Self::UpdateOrderStatus => "UpdateOrderStatus, shed",
            Self::CreateOrder => "CreateOrder, shed",
        }
    }
}

/// The `on_start` transaction of every scenario: connects to goose's `--host`.
pub async fn connect(user: &mut GooseUser) -> TransactionResult {
    let endpoint = user.base_url.to_string();
    let client = target::connect(&endpoint).await.map_err(failure)?;
    user.set_session_data(Session { client });
    Ok(())
}

/// The user's client. Cloning it is cheap (the connection is shared) and lets a call run while the
/// user is borrowed again to record it.
pub fn client(user: &GooseUser) -> Result<OrderServiceClient<Channel>, Box<TransactionError>> {
    user.get_session_data::<Session>()
        .map(|session| session.client.clone())
        .ok_or_else(|| failure("the user has no session: its on_start transaction did not connect"))
}

/// Times `call`, records it as `rpc`, and hands back its answer (a failed call is recorded as a
/// failed request and returned, not turned into a transaction error: goose would count it twice).
///
/// A refusal that asks for a pause (`grpc-retry-pushback-ms`, as the service's admission control sends
/// with `RESOURCE_EXHAUSTED`) is honoured before the answer is handed back, as gRPC's retry policy
/// would: the user's next call waits for it.
///
/// With goose's `--throttle-requests`, the call first waits for a token of goose's throttle, as goose's
/// own HTTP requests do (goose applies it to those only; custom requests would bypass it). When the run
/// ends the throttle closes, and the call is cancelled the way goose cancels its own: no error.
pub async fn timed<T>(
    user: &mut GooseUser,
    rpc: Rpc,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Result<T, tonic::Status>, Box<TransactionError>> {
    if user.is_throttled
        && let Some(throttle) = user.throttle.clone()
    {
        throttle
            .send_async(true)
            .await
            .map_err(|closed| Box::new(TransactionError::from(closed)))?;
    }
    let started = Instant::now();
    let answer = call.await.map(tonic::Response::into_inner);
    record(user, rpc, started.elapsed(), &answer).await?;
    if let Err(status) = &answer
        && let Some(pause) = pushback(status)
    {
        tokio::time::sleep(pause).await;
    }
    Ok(answer)
}

/// The pause a refusal asks for, if any (`grpc-retry-pushback-ms`; a negative or malformed value means
/// "do not retry" in gRFC A6, taken here as no pause: goose users do not stop).
fn pushback(status: &tonic::Status) -> Option<Duration> {
    let millis = status
        .metadata()
        .get(service::grpc::admission::RETRY_PUSHBACK_KEY)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_millis(millis))
}

/// Records one finished call; success is the gRPC status `OK`. A shed call goes under
/// [`Rpc::shed_name`].
pub async fn record<T>(
    user: &mut GooseUser,
    rpc: Rpc,
    elapsed: Duration,
    answer: &Result<T, tonic::Status>,
) -> TransactionResult {
    let (success, code, error) = match answer {
        Ok(_) => (true, tonic::Code::Ok, None),
        Err(status) => (
            false,
            status.code(),
            Some(format!("{:?}: {}", status.code(), status.message())),
        ),
    };
    let name = if code == tonic::Code::ResourceExhausted {
        rpc.shed_name()
    } else {
        rpc.name()
    };
    user.record_custom_request_duration(
        METHOD,
        name,
        elapsed,
        success,
        Some(code as u16),
        error.as_deref(),
    )
    .await
}

/// A transaction error from anything displayable.
pub fn failure(error: impl std::fmt::Display) -> Box<TransactionError> {
    Box::new(TransactionError::Custom(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(pushback: &str) -> tonic::Status {
        let mut status = tonic::Status::resource_exhausted("busy");
        status.metadata_mut().insert(
            service::grpc::admission::RETRY_PUSHBACK_KEY,
            pushback.parse().expect("ascii"),
        );
        status
    }

    #[test]
    fn a_refusal_with_a_pushback_asks_for_that_pause() {
        assert_eq!(pushback(&refusal("250")), Some(Duration::from_millis(250)));
    }

    #[test]
    fn no_pushback_or_a_malformed_one_asks_for_no_pause() {
        assert_eq!(pushback(&tonic::Status::resource_exhausted("busy")), None);
        assert_eq!(pushback(&refusal("-1")), None);
        assert_eq!(pushback(&refusal("soon")), None);
    }
}
