//! `orders.v1.OrderService`: parses each request into domain values, then calls storage or the reader.

use tonic::{Request, Response, Status};

use super::admission::Admission;
use super::auth::AuthToken;
use super::status;
use crate::cache::OrderCache;
use crate::domain::{NewOrder, OrderId, OrderStatus};
use crate::proto::orders::v1::{self as pb, order_service_server::OrderService};
use crate::reads::{OrderReader, ReadThrough};
use crate::storage::Storage;
use crate::telemetry::trace_context::{TRACEPARENT, TraceParent};

/// Most ids one `GetOrders` may ask for.
pub const MAX_IDS_PER_GET_ORDERS: usize = 1000;

#[derive(Clone)]
pub struct OrdersApi<C = OrderCache> {
    storage: Storage,
    reader: OrderReader<C>,
    auth: Option<AuthToken>,
    admission: Admission,
}

impl<C: ReadThrough> OrdersApi<C> {
    pub fn new(
        storage: Storage,
        reader: OrderReader<C>,
        auth: Option<AuthToken>,
        admission: Admission,
    ) -> Self {
        Self {
            storage,
            reader,
            auth,
            admission,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.auth {
            Some(token) => token.check(request),
            None => Ok(()),
        }
    }
}

/// The request's trace: the client's `traceparent` continued, or a new trace; its id goes in the RPC's
/// span, so that every log line of the call carries it.
fn traced<T>(request: &Request<T>) -> TraceParent {
    let header = request
        .metadata()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    let trace = TraceParent::continue_or_start(header);
    tracing::Span::current().record("trace_id", tracing::field::display(trace.trace_id()));
    trace
}

/// The answer, with the call's `traceparent` in its metadata: a client that sent none learns the trace
/// its write can be found by.
fn with_trace<T>(mut response: Response<T>, trace: TraceParent) -> Response<T> {
    if let Ok(value) = trace.to_string().parse() {
        response.metadata_mut().insert(TRACEPARENT, value);
    }
    response
}

#[tonic::async_trait]
impl<C: ReadThrough> OrderService for OrdersApi<C> {
    #[tracing::instrument(name = "CreateOrder", skip_all, fields(trace_id))]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let trace = traced(&request);
        let _admitted = self.admission.admit().await?;
        self.authorize(&request)?;
        let request = request.into_inner();
        let items = request.items.into_iter().map(Into::into).collect();
        let new_order = NewOrder::parse(request.client_id, items, &request.idempotency_key)
            .map_err(status::invalid_new_order)?;
        let order = self
            .storage
            .create_order(&new_order, trace)
            .await
            .map_err(status::create)?;
        tracing::debug!(order_id = %order.id, version = order.version, "order created");
        Ok(with_trace(
            Response::new(pb::CreateOrderResponse {
                order: Some((&order).into()),
            }),
            trace,
        ))
    }

    #[tracing::instrument(name = "GetOrder", skip_all, fields(trace_id))]
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let trace = traced(&request);
        let _admitted = self.admission.admit().await?;
        let request = request.into_inner();
        let id = OrderId::parse(request.order_id).map_err(|e| status::invalid_order_id("order_id", e))?;
        if request.min_version < 0 {
            return Err(Status::invalid_argument(format!(
                "min_version must not be negative, got {}",
                request.min_version
            )));
        }
        let read = self
            .reader
            .get(id, request.min_version)
            .await
            .map_err(status::storage)?
            .ok_or_else(|| Status::not_found(format!("order {id} does not exist")))?;
        Ok(with_trace(
            Response::new(pb::GetOrderResponse {
                order: Some(read.order),
                source: read.source.into(),
            }),
            trace,
        ))
    }

    #[tracing::instrument(name = "GetOrders", skip_all, fields(trace_id))]
    async fn get_orders(
        &self,
        request: Request<pb::GetOrdersRequest>,
    ) -> Result<Response<pb::GetOrdersResponse>, Status> {
        let trace = traced(&request);
        let _admitted = self.admission.admit().await?;
        let request = request.into_inner();
        if request.order_ids.len() > MAX_IDS_PER_GET_ORDERS {
            return Err(Status::invalid_argument(format!(
                "order_ids may hold at most {MAX_IDS_PER_GET_ORDERS} ids, got {}",
                request.order_ids.len()
            )));
        }
        let mut ids = Vec::with_capacity(request.order_ids.len());
        for (index, id) in request.order_ids.iter().enumerate() {
            let id = OrderId::parse(*id)
                .map_err(|e| status::invalid_order_id(&format!("order_ids[{index}]"), e))?;
            // A repeated id is answered once, at its first position.
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut found = self.reader.get_many(&ids, 0).await.map_err(status::storage)?;
        let mut response = pb::GetOrdersResponse::default();
        for id in ids {
            match found.remove(&id) {
                Some(read) => response.orders.push(read.order),
                None => response.not_found_ids.push(id.get()),
            }
        }
        Ok(with_trace(Response::new(response), trace))
    }

    #[tracing::instrument(name = "UpdateOrderStatus", skip_all, fields(trace_id))]
    async fn update_order_status(
        &self,
        request: Request<pb::UpdateOrderStatusRequest>,
    ) -> Result<Response<pb::UpdateOrderStatusResponse>, Status> {
        let trace = traced(&request);
        let _admitted = self.admission.admit().await?;
        self.authorize(&request)?;
        let request = request.into_inner();
        let id = OrderId::parse(request.order_id).map_err(|e| status::invalid_order_id("order_id", e))?;
        let to = OrderStatus::from_proto(request.status).map_err(status::invalid_status)?;
        if let Some(expected) = request.expected_version
            && expected <= 0
        {
            return Err(Status::invalid_argument(format!(
                "expected_version must be positive, got {expected}"
            )));
        }
        let change = self
            .storage
            .update_status(id, to, request.expected_version, trace)
            .await
            .map_err(status::update)?;
        tracing::debug!(
            order_id = %id,
            version = change.order.version,
            changed = change.changed,
            "status updated"
        );
        Ok(with_trace(
            Response::new(pb::UpdateOrderStatusResponse {
                order: Some((&change.order).into()),
            }),
            trace,
        ))
    }
}
