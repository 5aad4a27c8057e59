//! `/metrics`: what this process did (counters and histograms, fed by the
//! store's observers and the HTTP layer) and what the cluster holds (gauges
//! read from the store at scrape time, O(queues)). Names are DESIGN.md's,
//! in the OpenMetrics text format Prometheus scrapes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kyu_core::Millis;
use kyu_core::tally::{Happening, WorkerInfo};
use kyu_store::Observer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueKind {
    queue: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempt {
    queue: String,
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

/// Job latencies: 1 ms to an hour.
fn job_seconds() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0])
}

/// Request latencies: 0.5 ms to a minute (long polls land in the last buckets).
fn request_seconds() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0])
}

/// This process's counters and histograms.
pub struct Metrics {
    registry: Registry,
    enqueued: Family<QueueLabel, Counter>,
    attempts: Family<Attempt, Counter>,
    run: Family<QueueKind, Histogram, fn() -> Histogram>,
    wait: Family<QueueLabel, Histogram, fn() -> Histogram>,
    requests: Family<RouteStatus, Counter>,
    request_time: Family<Route, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The families of DESIGN.md, empty.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let enqueued = Family::<QueueLabel, Counter>::default();
        let attempts = Family::<Attempt, Counter>::default();
        let run = Family::<QueueKind, Histogram, fn() -> Histogram>::new_with_constructor(job_seconds as fn() -> Histogram);
        let wait = Family::<QueueLabel, Histogram, fn() -> Histogram>::new_with_constructor(job_seconds as fn() -> Histogram);
        let requests = Family::<RouteStatus, Counter>::default();
        let request_time =
            Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(request_seconds as fn() -> Histogram);
        registry.register("kyu_jobs_enqueued", "Jobs this process enqueued", enqueued.clone());
        registry.register("kyu_job_attempts", "Attempts that ended in this process, by outcome", attempts.clone());
        registry.register("kyu_job_run_seconds", "How long one attempt ran, claim to end", run.clone());
        registry.register("kyu_job_wait_seconds", "How long a job waited from ready to claimed", wait.clone());
        registry.register("kyu_http_requests", "HTTP requests served, by route and status", requests.clone());
        registry.register("kyu_http_request_duration_seconds", "How long HTTP requests took, by route", request_time.clone());
        let build = Family::<Version, Gauge>::default();
        build.get_or_create(&Version { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("kyu_build_info", "kyu's version", build);
        Metrics { registry, enqueued, attempts, run, wait, requests, request_time }
    }

    /// Counts one HTTP request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        self.requests.get_or_create(&RouteStatus { route: route.to_owned(), status }).inc();
        self.request_time.get_or_create(&Route { route: route.to_owned() }).observe(seconds);
    }

    /// The exposition: this process's families, then `cluster`'s gauges.
    pub fn render(&self, cluster: Option<&Cluster>) -> String {
        let mut out = String::with_capacity(8192);
        encode_registry(&mut out, &self.registry).expect("writing to a String");
        if let Some(c) = cluster {
            encode_registry(&mut out, &c.registry()).expect("writing to a String");
        }
        encode_eof(&mut out).expect("writing to a String");
        out
    }
}

impl Observer for Metrics {
    fn observe(&self, _at: Millis, happenings: &[Happening]) {
        for h in happenings {
            match h {
                Happening::Enqueued { queue, .. } => {
                    self.enqueued.get_or_create(&QueueLabel { queue: queue.to_string() }).inc();
                }
                Happening::Started { queue, wait_ms, .. } => {
                    self.wait.get_or_create(&QueueLabel { queue: queue.to_string() }).observe(*wait_ms as f64 / 1000.0);
                }
                Happening::Ended { queue, kind, outcome, run_ms, .. } => {
                    let labels = Attempt { queue: queue.to_string(), kind: kind.clone(), outcome: outcome.as_str() };
                    self.attempts.get_or_create(&labels).inc();
                    self.run
                        .get_or_create(&QueueKind { queue: queue.to_string(), kind: kind.clone() })
                        .observe(*run_ms as f64 / 1000.0);
                }
                Happening::Changed { .. } => {}
            }
        }
    }
}

/// The cluster-wide gauges, read from the store for one scrape.
pub struct Cluster {
    /// Every queue with its counts.
    pub queues: Vec<kyu_core::QueueInfo>,
    /// Workers seen lately.
    pub workers: Vec<WorkerInfo>,
    /// The store's time.
    pub now: Millis,
}

impl Cluster {
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        let jobs = Family::<QueueState, Gauge>::default();
        let oldest = Family::<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let paused = Family::<QueueLabel, Gauge>::default();
        let workers = Family::<QueueLabel, Gauge>::default();
        for q in &self.queues {
            let queue = q.name.to_string();
            for (state, n) in &q.counts {
                jobs.get_or_create(&QueueState { queue: queue.clone(), state: state.clone() }).set(*n);
            }
            let age = q.oldest_ready_at.map_or(0.0, |t| (self.now.0 - t.0).max(0) as f64 / 1000.0);
            oldest.get_or_create(&QueueLabel { queue: queue.clone() }).set(age);
            paused.get_or_create(&QueueLabel { queue: queue.clone() }).set(i64::from(q.paused));
            workers.get_or_create(&QueueLabel { queue: queue.clone() }).set(0);
        }
        for w in &self.workers {
            for q in &w.queues {
                workers.get_or_create(&QueueLabel { queue: q.clone() }).inc();
            }
        }
        r.register("kyu_queue_jobs", "Jobs in the store, by queue and state (cluster-wide)", jobs);
        r.register("kyu_queue_oldest_ready_age_seconds", "How long the queue's oldest ready job has waited (0 when none)",
            oldest,
        );
        r.register("kyu_queue_paused", "1 while the queue is paused", paused);
        r.register("kyu_workers", "Workers seen in the last 3 minutes, by queue they serve", workers);
        r
    }
}

/// Middleware: counts each request under its route's pattern (not its
/// path, so ids do not make a label per job).
pub(crate) async fn count_requests(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics.request(&route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

/// Serves `metrics` (this process's families only) on `GET /metrics` until
/// `stop`: what `kyu work --metrics ADDR` runs beside a worker that talks to
/// the database directly.
pub async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, stop: tokio_util::sync::CancellationToken) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render(None)) }
        }),
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}
