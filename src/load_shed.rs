//! Load shedding (SPEC §2 RESOURCE_EXHAUSTED / OVERLOADED): at most `max_in_flight`
//! requests are served at once over all connections, counted from the moment a request's
//! headers arrive (so reading its message counts too), and none is admitted while work waits
//! longer than `max_queue_delay` in the runtime's queue. Beyond that a request is answered at
//! once, before its message is read: `RESOURCE_EXHAUSTED` for the Auth API, and for Envoy's
//! Check an OK RPC carrying a 503 deny with reason OVERLOADED (an RPC error would let
//! `failure_mode_allow` deployments through). Unary health checks are never shed.
//!
//! The in-flight count alone cannot keep admitted requests fast: HTTP/2 stream limits keep
//! requests queued in the clients, so a few connections never reach `max_in_flight`, and the
//! wait happens in the run queue before a request's task first runs. A probe task measures
//! that wait instead: it asks to wake every [`PROBE_INTERVAL`] and records how late it ran.
//! Two late probes in a row are needed to shed: one stall (a pause of the whole process)
//! delays work once and is over, a queue that the server cannot drain delays every probe.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
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

/// How often the queue-delay probe measures.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

struct InFlight {
    metrics: Arc<Metrics>,
    current: AtomicUsize,
    max: usize,
    /// How late the probe ran, in microseconds, the lesser of its last two runs: how long
    /// work has been waiting to run.
    queue_delay_us: AtomicU64,
    /// Shed while `queue_delay_us` is above this; 0: never.
    max_queue_delay_us: u64,
    /// The gRPC message of an overloaded Check answer, framed once.
    check_overloaded: Bytes,
}

/// Counts in-flight requests and sheds those beyond the limit.
#[derive(Clone)]
pub struct LoadShedLayer {
    state: Arc<InFlight>,
}

impl LoadShedLayer {
    /// Must be made inside a Tokio runtime when `max_queue_delay` is not zero: it starts the
    /// probe, which ends when the layer and every service made from it are gone.
    pub fn new(max_in_flight: usize, max_queue_delay: Duration, metrics: Arc<Metrics>) -> Self {
        let message = crate::grpc::ext_authz::overloaded().encode_to_vec();
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(0); // not compressed
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&message);
        let state = Arc::new(InFlight {
            metrics,
            current: AtomicUsize::new(0),
            max: max_in_flight,
            queue_delay_us: AtomicU64::new(0),
            max_queue_delay_us: u64::try_from(max_queue_delay.as_micros()).unwrap_or(u64::MAX),
            check_overloaded: Bytes::from(framed),
        });
        if !max_queue_delay.is_zero() {
            tokio::spawn(probe(Arc::downgrade(&state)));
        }
        Self { state }
    }
}

/// Measures, every [`PROBE_INTERVAL`], how late the runtime runs a task that asked to wake:
/// the time work waits in its queue.
async fn probe(state: Weak<InFlight>) {
    let mut last_late_us = 0;
    loop {
        let asked = Instant::now();
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let late = asked.elapsed().saturating_sub(PROBE_INTERVAL);
        let late_us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        state
            .queue_delay_us
            .store(late_us.min(last_late_us), Ordering::Relaxed);
        last_late_us = late_us;
    }
}

impl InFlight {
    /// Whether work waits longer than allowed to run.
    fn queue_too_slow(&self) -> bool {
        self.max_queue_delay_us != 0
            && self.queue_delay_us.load(Ordering::Relaxed) > self.max_queue_delay_us
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
        let admitted = self.state.current.fetch_add(1, Ordering::AcqRel) < self.state.max
            && !self.state.queue_too_slow();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for the gRPC services: answers 200 to whatever is admitted.
    #[derive(Clone)]
    struct Admitted;

    impl Service<http::Request<Body>> for Admitted {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    async fn call(service: &mut LoadShed<Admitted>, path: &str) -> http::Response<Body> {
        let request = http::Request::builder()
            .uri(format!("http://portcullis{path}"))
            .body(Body::empty())
            .unwrap();
        service.call(request).await.unwrap()
    }

    async fn admits_authenticate(service: &mut LoadShed<Admitted>) -> bool {
        call(service, "/portcullis.v1.Auth/Authenticate")
            .await
            .status()
            == 200
    }

    /// Blocks the (only) runtime thread for `how_long`, then lets the probe run.
    async fn stall_the_runtime(how_long: Duration) {
        std::thread::sleep(how_long);
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
    }

    /// Work held up in the run queue (here: the only thread blocked, twice) makes the probe
    /// late, and requests are shed while it is; one stall alone sheds nothing; once the
    /// queue moves again they are admitted.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_are_shed_while_work_waits_too_long_to_run() {
        let layer = LoadShedLayer::new(
            1024,
            Duration::from_millis(100),
            Arc::new(Metrics::new(true)),
        );
        let mut service = layer.layer(Admitted);
        assert_eq!(
            Arc::weak_count(&layer.state),
            1,
            "the probe watches the state"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!layer.state.queue_too_slow(), "an idle runtime is on time");
        assert!(admits_authenticate(&mut service).await);

        // Hold the only thread for 300 ms: the probe's wake-up waits behind it. Once is a
        // stall, not a queue.
        stall_the_runtime(Duration::from_millis(300)).await;
        assert!(!layer.state.queue_too_slow(), "one stall sheds nothing");
        assert!(admits_authenticate(&mut service).await);
        // Again, right after: the probe is late twice in a row.
        stall_the_runtime(Duration::from_millis(300)).await;
        assert!(layer.state.queue_too_slow(), "the probe saw the wait twice");
        let shed = call(&mut service, "/portcullis.v1.Auth/Authenticate").await;
        assert_eq!(grpc_status(&shed), Some("8"), "RESOURCE_EXHAUSTED");
        let check = call(&mut service, CHECK_PATH).await;
        assert_eq!(grpc_status(&check), None, "a Check is an OK RPC ...");
        assert_eq!(
            check.headers().get(http::header::CONTENT_TYPE).unwrap(),
            "application/grpc",
            "... carrying the OVERLOADED deny"
        );
        assert_eq!(
            call(&mut service, HEALTH_CHECK).await.status(),
            200,
            "health checks are never shed"
        );

        // The queue moves again: the next probe is on time.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!layer.state.queue_too_slow());
        assert!(admits_authenticate(&mut service).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_zero_queue_delay_turns_the_probe_off() {
        let layer = LoadShedLayer::new(1024, Duration::ZERO, Arc::new(Metrics::new(true)));
        let mut service = layer.layer(Admitted);
        std::thread::sleep(Duration::from_millis(50));
        tokio::task::yield_now().await;
        assert!(!layer.state.queue_too_slow());
        assert!(admits_authenticate(&mut service).await);
        assert_eq!(Arc::weak_count(&layer.state), 0, "no probe was started");
    }
}
