//! Prometheus metrics and the /metrics + /healthz endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{Error, Result};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub throttle_pauses: IntCounterVec,
    pub esi_error_limit_remain: IntGauge,
    pub jobs: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub cache_events: IntCounterVec,
    pub cache_entries: IntGaugeVec,
    pub values_recomputed: IntCounter,
    pub feed_sequence: IntGauge,
    pub feed_latest_sequence: IntGauge,
    pub feed_lag_seconds: Gauge,
    pub feed_ingested: IntCounter,
    pub feed_skipped: IntCounter,
    pub feed_rejected: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are static and unique, so registration cannot collide.
    #[allow(clippy::unwrap_used)]
    r.register(Box::new(m.clone())).unwrap();
    m
}

impl Metrics {
    #[allow(clippy::unwrap_used)] // metric definitions are static; a failure is a programming error caught by tests
    pub fn new() -> Arc<Self> {
        let r = Registry::new_custom(Some("killboard_sidecar".into()), None).unwrap();
        let m = Metrics {
            http_requests: reg(&r, IntCounterVec::new(
                Opts::new("http_requests_total", "Upstream HTTP requests by upstream, endpoint and status (timeout/error when no status)."),
                &["upstream", "endpoint", "status"]).unwrap()),
            http_duration: reg(&r, HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "Upstream HTTP request latency.")
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["upstream", "endpoint"]).unwrap()),
            throttle_pauses: reg(&r, IntCounterVec::new(
                Opts::new("throttle_pauses_total", "Pauses of an upstream: 420, 429, or the ESI error budget running low."),
                &["upstream", "reason"]).unwrap()),
            esi_error_limit_remain: reg(&r, IntGauge::new(
                "esi_error_limit_remain", "Last X-ESI-Error-Limit-Remain seen (-1 before any).").unwrap()),
            jobs: reg(&r, IntCounterVec::new(
                Opts::new("jobs_total", "Fetch-queue jobs finished, by kind and outcome (done, retry, throttled, parked)."),
                &["kind", "outcome"]).unwrap()),
            queue_depth: reg(&r, IntGaugeVec::new(
                Opts::new("queue_depth", "killboard.fetch_queue rows by kind and state (ready, waiting, parked)."),
                &["kind", "state"]).unwrap()),
            cache_events: reg(&r, IntCounterVec::new(
                Opts::new("cache_events_total", "TTL cache reads and evictions seen in the database (hit, stale, miss, eviction)."),
                &["cache", "event"]).unwrap()),
            cache_entries: reg(&r, IntGaugeVec::new(
                Opts::new("cache_entries", "Rows in each TTL cache."), &["cache"]).unwrap()),
            values_recomputed: reg(&r, IntCounter::new(
                "values_recomputed_total", "Killmails re-valued after prices arrived.").unwrap()),
            feed_sequence: reg(&r, IntGauge::new("feed_sequence", "Last R2Z2 sequence ingested.").unwrap()),
            feed_latest_sequence: reg(&r, IntGauge::new("feed_latest_sequence", "Latest sequence announced by sequence.json.").unwrap()),
            feed_lag_seconds: reg(&r, Gauge::new("feed_lag_seconds", "Seconds between zKillboard's upload of the last ingested killmail and its ingest.").unwrap()),
            feed_ingested: reg(&r, IntCounter::new("feed_ingested_total", "R2Z2 packages ingested.").unwrap()),
            feed_skipped: reg(&r, IntCounter::new("feed_skipped_total", "R2Z2 sequences skipped after the gap timeout.").unwrap()),
            feed_rejected: reg(&r, IntCounter::new("feed_rejected_total", "R2Z2 packages that killboard.ingest rejected as invalid.").unwrap()),
            registry: r,
        };
        m.esi_error_limit_remain.set(-1);
        Arc::new(m)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Mirror a monotonic database counter into a Prometheus counter.
    pub fn sync_counter(&self, cache: &str, event: &str, db_value: i64) {
        let c = self.cache_events.with_label_values(&[cache, event]);
        let seen = c.get() as i64;
        if db_value > seen {
            c.inc_by((db_value - seen) as u64);
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    database_url: Arc<String>,
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz_handler(State(s): State<AppState>) -> impl IntoResponse {
    let check = async {
        let client = crate::db::connect(&s.database_url).await?;
        client.simple_query("SELECT 1").await?;
        Ok::<_, Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {}\n", e.kind_str()),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database check timed out\n".to_string(),
        ),
    }
}

/// Bind now (so a bad address fails at start-up), serve in the background.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, database_url: String) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .with_state(AppState {
            metrics,
            database_url: Arc::new(database_url),
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
