//! A client of the orders API with one method per RPC, shared by the service's tests, the consistency
//! harness and the load test. Every call has a deadline; errors are the server's `tonic::Status`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use service::domain::OrderStatus;
use service::proto::google::r#type::Money;
use service::proto::orders::v1 as pb;
use service::proto::orders::v1::order_service_client::OrderServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The deadline of every call unless [`OrdersClient::with_timeout`] sets another.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct OrdersClient {
    grpc: OrderServiceClient<Channel>,
    timeout: Duration,
}

impl OrdersClient {
    /// A client that connects on first use, and again by itself after the server restarts.
    pub fn lazy(address: SocketAddr) -> Self {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .expect("a socket address makes a valid URI")
            .connect_timeout(Duration::from_secs(1));
        Self {
            grpc: OrderServiceClient::new(endpoint.connect_lazy()),
            timeout: CALL_TIMEOUT,
        }
    }

    /// A client of a server that is starting: waits up to `within` for it to accept a connection.
    pub async fn connect(address: SocketAddr, within: Duration) -> Result<Self, tonic::transport::Error> {
        let endpoint = format!("http://{address}");
        let deadline = Instant::now() + within;
        loop {
            match OrderServiceClient::connect(endpoint.clone()).await {
                Ok(grpc) => {
                    return Ok(Self {
                        grpc,
                        timeout: CALL_TIMEOUT,
                    });
                }
                Err(error) if Instant::now() > deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The generated client, for requests the methods below do not make (malformed ones, metadata).
    pub fn grpc(&self) -> OrderServiceClient<Channel> {
        self.grpc.clone()
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    pub async fn create_order(&self, request: pb::CreateOrderRequest) -> Result<pb::Order, Status> {
        let response = self.grpc().create_order(self.request(request)).await?;
        response
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("CreateOrder answered without an order"))
    }

    /// A small order of `client_id`: two items, 17 EUR in all.
    pub async fn create(&self, client_id: i64) -> Result<pb::Order, Status> {
        self.create_order(sample_order(client_id)).await
    }

    pub async fn set_status(
        &self,
        order_id: i64,
        status: OrderStatus,
        expected_version: Option<i64>,
    ) -> Result<pb::Order, Status> {
        let request = pb::UpdateOrderStatusRequest {
            order_id,
            status: status.to_proto(),
            expected_version,
        };
        let response = self.grpc().update_order_status(self.request(request)).await?;
        response
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("UpdateOrderStatus answered without an order"))
    }

    pub async fn get_order(&self, order_id: i64, min_version: i64) -> Result<pb::GetOrderResponse, Status> {
        let request = pb::GetOrderRequest {
            order_id,
            min_version,
        };
        Ok(self.grpc().get_order(self.request(request)).await?.into_inner())
    }

    pub async fn get_orders(&self, order_ids: Vec<i64>) -> Result<pb::GetOrdersResponse, Status> {
        let request = pb::GetOrdersRequest { order_ids };
        Ok(self.grpc().get_orders(self.request(request)).await?.into_inner())
    }
}

pub fn item(sku_id: i64, quantity: i32, units: i64, nanos: i32) -> pb::OrderItem {
    pb::OrderItem {
        sku_id,
        quantity,
        price: Some(Money {
            currency_code: "EUR".into(),
            units,
            nanos,
        }),
    }
}

/// Two items: 2 x 3.50 EUR and 1 x 10 EUR.
pub fn sample_order(client_id: i64) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        client_id,
        items: vec![item(100, 2, 3, 500_000_000), item(200, 1, 10, 0)],
        idempotency_key: String::new(),
    }
}
