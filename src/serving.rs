//! The serving state one process shares between its surfaces, the admin endpoints and the
//! reloader: the current pipeline (swapped atomically by a reload), the outbound HTTP client,
//! the gRPC listener's TLS configuration, readiness and the configuration generation.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::{pipeline::Pipeline, telemetry::metrics::Metrics, tls::SharedTls};

/// State shared by the surfaces, the admin endpoints and the reloader.
pub struct Shared {
    pub pipeline: Arc<ArcSwap<Pipeline>>,
    pub client: reqwest::Client,
    /// The process's metrics, served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The gRPC listener's TLS configuration, when it has TLS; reloads replace it.
    pub tls: Option<SharedTls>,
    ready: watch::Sender<bool>,
    /// The serving configuration generation: 1 at start, +1 per applied reload.
    generation: AtomicU64,
}

impl Shared {
    /// Generation 1, serving `pipeline`, not ready yet.
    pub fn new(
        pipeline: Pipeline,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
        tls: Option<SharedTls>,
    ) -> Self {
        Self {
            pipeline: Arc::new(ArcSwap::from_pointee(pipeline)),
            client,
            metrics,
            tls,
            ready: watch::channel(false).0,
            generation: AtomicU64::new(1),
        }
    }

    /// Every key source of the first generation has loaded once.
    pub(crate) fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The serving configuration generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Serves `pipeline` from now on, as the next generation (returned). The generation is
    /// counted before the swap, so whoever sees the new pipeline sees its generation too.
    pub(crate) fn install(&self, pipeline: Pipeline) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.pipeline.store(Arc::new(pipeline));
        generation
    }
}
