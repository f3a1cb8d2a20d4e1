//! The gRPC server: `orders.v1.OrderService`, server reflection (v1 and v1alpha, so every grpcurl
//! version works), and `grpc.health.v1`.
//!
//! Shutdown is graceful: when the token is cancelled the server stops accepting connections and waits
//! for the calls in flight to finish.

pub mod admission;
mod auth;
pub mod health;
mod orders;
mod status;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

pub use admission::Admission;
pub use auth::AuthToken;
pub use orders::{MAX_IDS_PER_GET_ORDERS, OrdersApi};

use crate::proto::{FILE_DESCRIPTOR_SET, orders::v1::order_service_server::OrderServiceServer};
use crate::reads::ReadThrough;

/// The longest a call of any service may run; a client's shorter `grpc-timeout` wins. A call past it is
/// answered `CANCELLED` ("Timeout expired", tonic's convention) and its work dropped.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request accepted, in bytes (a GetOrders of 1000 ids is about 10 KB; an order of 1000 items
/// about 40 KB).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Builds the health service; the returned reporter is what [`health::HealthMonitor`] updates.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// The accepted connections, with `TCP_NODELAY` set. tonic sets it only on listeners it binds itself;
/// without it, an answer written in two parts waits for the client's delayed ACK (Nagle's algorithm):
/// about 40 ms on Linux, which the load test measured on nearly every `GetOrders`.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves until `shutdown`, then drains the calls in flight.
pub async fn serve<C: ReadThrough>(
    listener: TcpListener,
    api: OrdersApi<C>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let orders = OrderServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES);
    Server::builder()
        .timeout(RPC_TIMEOUT)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(orders)
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_delayed_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
        let address = listener.local_addr().expect("the listener's address");
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(address).await.expect("connecting");
        let connection = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepting it");
        assert!(
            connection.nodelay().expect("reading TCP_NODELAY"),
            "TCP_NODELAY is off"
        );
    }
}
