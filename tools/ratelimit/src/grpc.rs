//! The gRPC services: Envoy's `RateLimitService` (envoy-types' generated server) and
//! wasmgate's `LeaseService` (written out here over tonic's unary machinery and prost codec,
//! with the messages of `wasmgate-ratelimit-protocol`: no code generation at build time).

use crate::counters::{LeaseSettlement, Store};
use crate::decision::{decide, DecisionOptions, Refusal};
use crate::lease::{renew, LeaseOptions};
use crate::limits::Limits;
use crate::metrics::{domain_label, Metrics};
use crate::snapshot::Snapshot;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use wasmgate_ratelimit_protocol::lease::{RenewRequest, RenewResponse};
use wasmgate_ratelimit_protocol::{LEASE_METHOD, LEASE_SERVICE};

/// Everything the services share.
pub struct State {
    snapshot: RwLock<Arc<Snapshot>>,
    store: Store,
    settlement: Arc<dyn LeaseSettlement>,
    pub metrics: Metrics,
    decision: DecisionOptions,
    lease: LeaseOptions,
    /// Second of the last store-failure log line (one a second at most).
    last_failure_log: AtomicU64,
}

impl State {
    pub fn new(
        limits: Limits,
        store: Store,
        metrics: Metrics,
        decision: DecisionOptions,
        lease: LeaseOptions,
    ) -> Result<State, String> {
        let rules = limits.rules().len();
        let snapshot = Snapshot::new(limits, &store)?;
        metrics.reloaded(true, Some(rules));
        Ok(State {
            snapshot: RwLock::new(Arc::new(snapshot)),
            settlement: store.settlement(),
            store,
            metrics,
            decision,
            lease,
            last_failure_log: AtomicU64::new(0),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts new limits in force (counters carry on: they live in the store).
    pub fn replace(&self, limits: Limits) -> Result<(), String> {
        let rules = limits.rules().len();
        let snapshot = Arc::new(Snapshot::new(limits, &self.store)?);
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
        self.metrics.reloaded(true, Some(rules));
        Ok(())
    }

    fn log_store_failure(&self, operation: &str, error: &dyn std::fmt::Display) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_failure_log.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(operation, error = %error, "counter store failed (logged once a second)");
        }
    }
}

/// `envoy.service.ratelimit.v3.RateLimitService`.
pub struct RateLimitApi(pub Arc<State>);

#[tonic::async_trait]
impl RateLimitService for RateLimitApi {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let state = &self.0;
        let request = request.into_inner();
        let snapshot = state.snapshot();
        let domain = domain_label(snapshot.limits.has_domain(&request.domain), &request.domain);
        let result = decide(&snapshot, &request, state.decision).await;
        state.metrics.timed("ShouldRateLimit", started.elapsed());
        match result {
            Ok(decision) => {
                state.metrics.decided(domain, &decision);
                Ok(Response::new(decision.response))
            }
            Err(Refusal::InvalidArgument(message)) => {
                state.metrics.undecided(domain, "invalid");
                Err(Status::invalid_argument(message))
            }
            Err(Refusal::Store(failure)) => {
                state.metrics.undecided(domain, "error");
                state.metrics.store_failed("should_rate_limit", &failure);
                state.log_store_failure("ShouldRateLimit", &failure);
                // Not UNKNOWN in a response (Envoy reads that as OK): an error, so that the
                // client's failure mode decides.
                Err(Status::unavailable(failure.to_string()))
            }
        }
    }
}

/// `wasmgate.ratelimit.v1.LeaseService`.
#[derive(Clone)]
pub struct LeaseServer(pub Arc<State>);

impl NamedService for LeaseServer {
    const NAME: &'static str = LEASE_SERVICE;
}

struct RenewCall(Arc<State>);

impl UnaryService<RenewRequest> for RenewCall {
    type Response = RenewResponse;
    type Future = BoxFuture<Response<RenewResponse>, Status>;

    fn call(&mut self, request: Request<RenewRequest>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            let started = Instant::now();
            let request = request.into_inner();
            let snapshot = state.snapshot();
            let (response, reports) =
                renew(&snapshot, state.settlement.as_ref(), &request, state.lease).await;
            state.metrics.timed("Renew", started.elapsed());
            for report in &reports {
                state.metrics.renewed(&request.domain, report);
                if let Some(failure) = &report.store_error {
                    state.log_store_failure("Renew", failure);
                }
            }
            Ok(Response::new(response))
        })
    }
}

impl<B> Service<http::Request<B>> for LeaseServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let renew_path = request.uri().path().strip_prefix('/').and_then(|p| {
            p.strip_prefix(LEASE_SERVICE)
                .and_then(|p| p.strip_prefix('/'))
                .filter(|method| *method == LEASE_METHOD)
        });
        if renew_path.is_none() {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let call = RenewCall(Arc::clone(&self.0));
        Box::pin(async move {
            let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(call, request).await)
        })
    }
}
