//! Load shedding (SPEC §2 RESOURCE_EXHAUSTED / OVERLOADED): at most `max_in_flight`
//! requests are served at once over all connections, counted from the moment a request's
//! headers arrive (so reading its message counts too). Beyond that a request is answered at
//! once, before its message is read: `RESOURCE_EXHAUSTED` for the Auth API, and for Envoy's
//! Check an OK RPC carrying a 503 deny with reason OVERLOADED (an RPC error would let
//! `failure_mode_allow` deployments through). Unary health checks are never shed.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use prost::Message;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::telemetry::{
    self,
    metrics::{Metrics, Surface},
};

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// Unary health checks are never shed (a Watch stream is, like any other request).
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

struct InFlight {
    metrics: Arc<Metrics>,
    current: AtomicUsize,
    max: usize,
    /// The gRPC message of an overloaded Check answer, framed once.
    check_overloaded: Bytes,
}

/// Counts in-flight requests and sheds those beyond the limit.
#[derive(Clone)]
pub struct LoadShedLayer {
    state: Arc<InFlight>,
}

impl LoadShedLayer {
    pub fn new(max_in_flight: usize, metrics: Arc<Metrics>) -> Self {
        let message = crate::grpc::ext_authz::overloaded().encode_to_vec();
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(0); // not compressed
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&message);
        Self {
            state: Arc::new(InFlight {
                metrics,
                current: AtomicUsize::new(0),
                max: max_in_flight,
                check_overloaded: Bytes::from(framed),
            }),
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    state: Arc<InFlight>,
}

/// One admitted request; leaving frees its slot.
struct Slot(Arc<InFlight>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.requests_in_flight.dec();
    }
}

impl<S> Service<http::Request<Body>> for LoadShed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if path == HEALTH_CHECK {
            return Box::pin(self.inner.call(request));
        }
        let admitted = self.state.current.fetch_add(1, Ordering::AcqRel) < self.state.max;
        let slot = Slot(self.state.clone());
        self.state.metrics.requests_in_flight.inc();
        if !admitted {
            let response = self.shed(path);
            drop(slot);
            return Box::pin(std::future::ready(Ok(response)));
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(slot);
            response
        })
    }
}

impl<S> LoadShed<S> {
    fn shed(&self, path: &str) -> http::Response<Body> {
        let surface = match path {
            CHECK_PATH => Some(Surface::ext_authz),
            "/portcullis.v1.Auth/Authenticate" => Some(Surface::authenticate),
            "/portcullis.v1.Auth/Authorize" => Some(Surface::authorize),
            _ => None,
        };
        telemetry::request_shed(&self.state.metrics, surface);
        if path == CHECK_PATH {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let body = OneMessage {
                message: Some(self.state.check_overloaded.clone()),
                trailers: Some(trailers),
            };
            let mut response = http::Response::new(Body::new(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            return response;
        }
        tonic::Status::resource_exhausted("too many requests in flight; retry with backoff")
            .into_http()
    }
}

/// A gRPC response body: one framed message, then the trailers.
struct OneMessage {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(message) = this.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}
