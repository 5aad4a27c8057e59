//! The console's pages. Each reads what it shows from the store (several
//! reads at once), turns it into finished strings ([`super::view`]) and
//! renders its template.

use std::collections::HashSet;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use kyu_core::tally::WorkerInfo;
use kyu_core::{Job, JobId, JobState, Millis, QueueInfo, QueueName};
use kyu_store::{JobListParams, JobLogParams, StatsParams, Store, StoreError};
use serde::Deserialize;

use super::view::{self, JobRow, STATES, When, job_href, job_row, queue_href, when, when_opt};
use super::{Chrome, Viewer, render, to_login};
use crate::AppState;

/// A page's failure: the store's error, shown on an error page.
pub(crate) struct Failure(StatusCode, String);

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = match &e {
            StoreError::Unavailable(_) | StoreError::Backend(_) => {
                tracing::warn!(error = %e, "console page: store error");
                "The store did not answer; this page retries on its own.".to_owned()
            }
            _ => e.to_string(),
        };
        Failure(status, message)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    status: u16,
    message: String,
}

/// Renders `page`, or the error page in the frame.
fn finish(v: &Viewer, page: Result<Response, Failure>) -> Response {
    match page {
        Ok(r) => r,
        Err(Failure(status, message)) => {
            render(status, &ErrorPage { chrome: Chrome::new(v, "Error", "", ""), status: status.as_u16(), message })
        }
    }
}

macro_rules! signed_in {
    ($app:expr, $headers:expr, $uri:expr) => {
        match $app.viewer(&$headers) {
            Some(v) => v,
            None => return to_login($uri.path_and_query().map_or("/", |p| p.as_str())),
        }
    };
}

pub(crate) struct Count {
    pub state: &'static str,
    pub n: i64,
}

pub(crate) struct QueueRow {
    pub name: String,
    pub href: String,
    pub paused: bool,
    pub counts: Vec<Count>,
    pub oldest: Option<String>,
    pub workers: usize,
    pub limits: String,
}

fn queue_row(q: &QueueInfo, workers: &[WorkerInfo], now: Millis) -> QueueRow {
    let mut limits = Vec::new();
    if let Some(c) = q.concurrency {
        limits.push(format!("{c} at once"));
    }
    if let Some(r) = q.rate_limit {
        limits.push(format!("{} per {}", r.max, view::span(r.per_ms)));
    }
    if let Some(g) = q.group_concurrency {
        limits.push(format!("{g} per group"));
    }
    if let Some(t) = q.timeout_ms {
        limits.push(format!("{} limit", view::span(t)));
    }
    QueueRow {
        name: q.name.to_string(),
        href: queue_href(q.name.as_str()),
        paused: q.paused,
        counts: STATES.iter().map(|s| Count { state: s.as_str(), n: q.counts.get(s.as_str()).copied().unwrap_or(0) }).collect(),
        oldest: q.oldest_ready_at.map(|t| view::span((now.0 - t.0).max(0))),
        workers: workers.iter().filter(|w| w.queues.iter().any(|x| x == q.name.as_str())).count(),
        limits: limits.join(", "),
    }
}

pub(crate) struct WorkerRow {
    pub name: String,
    pub host: String,
    pub pid: String,
    pub queues: String,
    pub runs: String,
    pub running: Vec<(String, String)>,
    pub busy: String,
    pub started: When,
    pub seen: When,
}

fn worker_row(w: &WorkerInfo, now: Millis) -> WorkerRow {
    WorkerRow {
        name: w.name.clone(),
        host: w.host.clone().unwrap_or_default(),
        pid: w.pid.map(|p| p.to_string()).unwrap_or_default(),
        queues: w.queues.join(", "),
        runs: w.runs.clone().unwrap_or_default(),
        running: w.running.iter().take(20).map(|id| (id.to_string(), job_href(id.as_str()))).collect(),
        busy: match w.concurrency {
            Some(c) => format!("{}/{c}", w.running.len()),
            None => w.running.len().to_string(),
        },
        started: when(w.started_at, now),
        seen: when(w.last_seen_at, now),
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    queues: Vec<QueueRow>,
    totals: Vec<Count>,
    throughput: String,
    wait: String,
    completed_hour: i64,
    failed_hour: i64,
    workers: Vec<WorkerRow>,
    failed: Vec<JobRow>,
}

/// `GET /`: queues, charts, workers, the latest failures.
pub(crate) async fn overview<S: Store>(State(app): State<AppState<S>>, headers: HeaderMap, uri: Uri) -> Response {
    let v = signed_in!(app, headers, uri);
    let page = async {
        let now = app.store.clock().now();
        let since = Millis(now.0 - 3_600_000);
        let failed_params = JobListParams { state: Some(JobState::Failed), limit: Some(10), ..Default::default() };
        let (queues, workers, stats, failed) = tokio::try_join!(
            app.store.queue_list(),
            app.store.worker_list(),
            app.store.stats(StatsParams { queue: None, since }),
            app.store.job_list(failed_params),
        )?;
        let series = view::series(&stats, now, 60);
        let mut totals: Vec<Count> = STATES.iter().map(|s| Count { state: s.as_str(), n: 0 }).collect();
        for q in &queues {
            for t in &mut totals {
                t.n += q.counts.get(t.state).copied().unwrap_or(0);
            }
        }
        let page = OverviewPage {
            chrome: Chrome::new(&v, "Overview", "overview", ""),
            queues: queues.iter().map(|q| queue_row(q, &workers, now)).collect(),
            totals,
            throughput: view::throughput_chart(&series),
            wait: view::latency_chart(&series.wait_p50, &series.wait_p95, "Wait from ready to start, p50 and p95"),
            completed_hour: series.completed.iter().sum(),
            failed_hour: series.failed.iter().sum(),
            workers: workers.iter().map(|w| worker_row(w, now)).collect(),
            failed: failed.jobs.iter().map(|j| job_row(j, now)).collect(),
        };
        Ok(render(StatusCode::OK, &page))
    };
    finish(&v, page.await)
}

/// A queue page's filters, as the form sends them.
#[derive(Deserialize, Default)]
pub(crate) struct Filter {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    error: Option<String>,
    /// Created within the last N minutes.
    #[serde(default)]
    within: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

pub(crate) struct Tab {
    pub state: &'static str,
    pub n: i64,
    pub href: String,
    pub active: bool,
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    chrome: Chrome,
    q: QueueRow,
    concurrency: String,
    rate_max: String,
    rate_per_ms: String,
    group_concurrency: String,
    timeout_ms: String,
    tabs: Vec<Tab>,
    all_href: String,
    state: String,
    kind: String,
    tag: String,
    error: String,
    within: String,
    jobs: Vec<JobRow>,
    next_href: Option<String>,
    dead_letter: bool,
    throughput: String,
    wait: String,
}

/// `GET /queues/{queue}`: settings, counts, jobs by state with filters.
pub(crate) async fn queue<S: Store>(
    State(app): State<AppState<S>>,
    headers: HeaderMap,
    uri: Uri,
    Path(name): Path<String>,
    Query(f): Query<Filter>,
) -> Response {
    let v = signed_in!(app, headers, uri);
    let page = async {
        let queue = QueueName::new(name.clone()).map_err(|m| Failure(StatusCode::BAD_REQUEST, m))?;
        let now = app.store.clock().now();
        let state = match non_empty(&f.state) {
            Some(s) => Some(s.parse::<JobState>().map_err(|m| Failure(StatusCode::BAD_REQUEST, m))?),
            None => None,
        };
        let within_min = match non_empty(&f.within) {
            Some(w) => Some(w.parse::<i64>().ok().filter(|m| (1..=525_600).contains(m)).ok_or_else(|| {
                Failure(StatusCode::BAD_REQUEST, "“created within” takes a number of minutes (1 to 525600)".into())
            })?),
            None => None,
        };
        let params = JobListParams {
            queue: Some(queue.clone()),
            state,
            kind: non_empty(&f.kind),
            tag: non_empty(&f.tag),
            error_contains: non_empty(&f.error),
            since: within_min.map(|m| Millis(now.0 - m * 60_000)),
            until: None,
            limit: Some(50),
            cursor: non_empty(&f.cursor),
        };
        let stats_params = StatsParams { queue: Some(queue.clone()), since: Millis(now.0 - 3_600_000) };
        let (queues, workers, page, stats) = tokio::try_join!(
            app.store.queue_list(),
            app.store.worker_list(),
            app.store.job_list(params),
            app.store.stats(stats_params),
        )?;
        let info = queues
            .iter()
            .find(|q| q.name == queue)
            .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("There is no queue `{name}`: it is made by its first job.")))?;
        let base = queue_href(queue.as_str());
        let keep = |state: Option<&str>| {
            let mut q = Vec::new();
            if let Some(s) = state {
                q.push(format!("state={s}"));
            }
            for (k, v) in [("kind", &f.kind), ("tag", &f.tag), ("error", &f.error), ("within", &f.within)] {
                if let Some(v) = non_empty(v) {
                    q.push(format!("{k}={}", view::qs(&v)));
                }
            }
            if q.is_empty() { base.clone() } else { format!("{base}?{}", q.join("&")) }
        };
        let state_str = state.map(|s| s.as_str()).unwrap_or_default();
        let tabs = STATES
            .iter()
            .map(|s| Tab {
                state: s.as_str(),
                n: info.counts.get(s.as_str()).copied().unwrap_or(0),
                href: keep(Some(s.as_str())),
                active: state == Some(*s),
            })
            .collect();
        let next_href = page.next_cursor.as_ref().map(|c| {
            let here = keep(state.map(|s| s.as_str()));
            format!("{here}{}cursor={}", if here.contains('?') { "&" } else { "?" }, view::qs(c))
        });
        let series = view::series(&stats, now, 60);
        let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        let page = QueuePage {
            chrome: Chrome::new(&v, format!("Queue {name}"), "queues", format!("queue:{name}")),
            q: queue_row(info, &workers, now),
            concurrency: opt(info.concurrency.map(i64::from)),
            rate_max: opt(info.rate_limit.map(|r| r.max)),
            rate_per_ms: opt(info.rate_limit.map(|r| r.per_ms)),
            group_concurrency: opt(info.group_concurrency.map(i64::from)),
            timeout_ms: opt(info.timeout_ms),
            tabs,
            all_href: keep(None),
            state: state_str.to_owned(),
            kind: non_empty(&f.kind).unwrap_or_default(),
            tag: non_empty(&f.tag).unwrap_or_default(),
            error: non_empty(&f.error).unwrap_or_default(),
            within: non_empty(&f.within).unwrap_or_default(),
            jobs: page.jobs.iter().map(|j| job_row(j, now)).collect(),
            next_href,
            dead_letter: matches!(state, Some(JobState::Failed | JobState::Cancelled)),
            throughput: view::throughput_chart(&series),
            wait: view::latency_chart(&series.wait_p50, &series.wait_p95, "Wait from ready to start, p50 and p95"),
        };
        Ok(render(StatusCode::OK, &page))
    };
    finish(&v, page.await)
}

pub(crate) struct ErrorRow {
    pub attempt: i32,
    pub at: When,
    pub message: String,
}

pub(crate) struct EventRow {
    pub at: When,
    pub kind: &'static str,
    pub attempt: String,
    pub worker: String,
    pub message: String,
}

pub(crate) struct LogRow {
    pub at: When,
    pub attempt: i32,
    pub line: String,
}

/// One job in a tree, indented by its depth.
pub(crate) struct Node {
    pub id: String,
    pub href: String,
    pub kind: String,
    pub state: &'static str,
    pub depth: usize,
    pub indent: String,
    pub missing: bool,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    id: String,
    href: String,
    queue: String,
    queue_href: String,
    kind: String,
    state: &'static str,
    attempt: String,
    priority: i32,
    worker: String,
    group: String,
    tags: Vec<String>,
    unique_key: String,
    timeout: String,
    created: When,
    run_at: When,
    started: Option<When>,
    finished: Option<When>,
    lease: Option<When>,
    cancel_requested: bool,
    payload: String,
    result: Option<String>,
    checkpoint: Option<String>,
    progress: Option<String>,
    errors: Vec<ErrorRow>,
    events: Vec<EventRow>,
    log: Vec<LogRow>,
    upstream: Vec<Node>,
    downstream: Vec<Node>,
    can_retry: bool,
    can_retry_dependents: bool,
    can_cancel: bool,
    can_delete: bool,
}

/// Most jobs a tree shows.
const MAX_NODES: usize = 200;

/// The jobs `root` waits for (its dependencies and children), depth first,
/// to `depth` levels and at most [`MAX_NODES`].
async fn tree<S: Store>(store: &S, root: &Job, depth: usize, down: bool) -> Result<Vec<Node>, StoreError> {
    let mut out = Vec::new();
    let mut seen: HashSet<JobId> = HashSet::from([root.id.clone()]);
    let first = if down { root.dependents.clone() } else { root.depends_on.clone() };
    let mut stack: Vec<(JobId, usize)> = first.into_iter().rev().map(|id| (id, 1)).collect();
    while let Some((id, d)) = stack.pop() {
        if out.len() >= MAX_NODES || !seen.insert(id.clone()) {
            continue;
        }
        let job = store.job_get(&id).await?;
        out.push(Node {
            id: id.to_string(),
            href: job_href(id.as_str()),
            kind: job.as_ref().map(|j| j.kind.clone()).unwrap_or_default(),
            state: job.as_ref().map_or("deleted", |j| j.state.as_str()),
            depth: d,
            indent: "\u{2003}".repeat(d - 1),
            missing: job.is_none(),
        });
        if let Some(j) = job
            && d < depth
        {
            let next = if down { j.dependents } else { j.depends_on };
            stack.extend(next.into_iter().rev().map(|c| (c, d + 1)));
        }
    }
    Ok(out)
}

/// `GET /jobs/{id}`: everything about one job.
pub(crate) async fn job<S: Store>(State(app): State<AppState<S>>, headers: HeaderMap, uri: Uri, Path(id): Path<String>) -> Response {
    let v = signed_in!(app, headers, uri);
    let page = async {
        let id = JobId::new(id).map_err(|m| Failure(StatusCode::BAD_REQUEST, m))?;
        let now = app.store.clock().now();
        let (job, events, log) = tokio::try_join!(
            app.store.job_get(&id),
            app.store.job_events(&id),
            app.store.job_log(JobLogParams { id: id.clone(), attempt: None }),
        )
        .map_err(Failure::from)?;
        let j = job.ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("There is no job `{id}` (it may have been pruned).")))?;
        let (upstream, downstream) = tokio::try_join!(tree(&app.store, &j, 4, false), tree(&app.store, &j, 2, true))?;
        let pretty = |v: &Option<serde_json::Value>| v.as_ref().map(view::json);
        let page = JobPage {
            chrome: Chrome::new(&v, format!("Job {id}"), "", format!("job:{id}")),
            id: id.to_string(),
            href: job_href(id.as_str()),
            queue: j.queue.to_string(),
            queue_href: queue_href(j.queue.as_str()),
            kind: j.kind.clone(),
            state: j.state.as_str(),
            attempt: format!("{} of {}", j.attempt, j.max_attempts),
            priority: j.priority,
            worker: j.worker.clone().unwrap_or_default(),
            group: j.group.clone().unwrap_or_default(),
            tags: j.tags.clone(),
            unique_key: j.unique_key.clone().unwrap_or_default(),
            timeout: j.timeout_ms.map(view::span).unwrap_or_default(),
            created: when(j.created_at, now),
            run_at: when(j.run_at, now),
            started: when_opt(j.started_at, now),
            finished: when_opt(j.finished_at, now),
            lease: when_opt(j.lease_expires_at, now),
            cancel_requested: j.cancel_requested,
            payload: view::json(&j.payload),
            result: pretty(&j.result),
            checkpoint: pretty(&j.checkpoint),
            progress: pretty(&j.progress),
            errors: j.errors.iter().rev().map(|e| ErrorRow { attempt: e.attempt, at: when(e.at, now), message: e.message.clone() }).collect(),
            events: events
                .iter()
                .map(|e| EventRow {
                    at: when(e.at, now),
                    kind: e.kind.as_str(),
                    attempt: e.attempt.map(|a| a.to_string()).unwrap_or_default(),
                    worker: e.worker.clone().unwrap_or_default(),
                    message: e.message.clone().unwrap_or_default(),
                })
                .collect(),
            log: log.iter().map(|l| LogRow { at: when(l.at, now), attempt: l.attempt, line: l.line.clone() }).collect(),
            upstream,
            downstream,
            can_retry: matches!(j.state, JobState::Failed | JobState::Cancelled),
            can_retry_dependents: matches!(j.state, JobState::Failed | JobState::Cancelled) && !j.dependents.is_empty(),
            can_cancel: !j.state.is_terminal() && !j.cancel_requested,
            can_delete: j.state != JobState::Running,
        };
        Ok(render(StatusCode::OK, &page))
    };
    finish(&v, page.await)
}

#[derive(Template)]
#[template(path = "workers.html")]
struct WorkersPage {
    chrome: Chrome,
    workers: Vec<WorkerRow>,
}

/// `GET /workers`.
pub(crate) async fn workers<S: Store>(State(app): State<AppState<S>>, headers: HeaderMap, uri: Uri) -> Response {
    let v = signed_in!(app, headers, uri);
    let page = async {
        let now = app.store.clock().now();
        let workers = app.store.worker_list().await?;
        let page = WorkersPage { chrome: Chrome::new(&v, "Workers", "workers", ""), workers: workers.iter().map(|w| worker_row(w, now)).collect() };
        Ok(render(StatusCode::OK, &page))
    };
    finish(&v, page.await)
}

pub(crate) struct ScheduleRow {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub queue: String,
    pub kind: String,
    pub enabled: bool,
    pub catchup: bool,
    pub next: Option<When>,
    pub last: Option<When>,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    schedules: Vec<ScheduleRow>,
}

/// `GET /schedules`.
pub(crate) async fn schedules<S: Store>(State(app): State<AppState<S>>, headers: HeaderMap, uri: Uri) -> Response {
    let v = signed_in!(app, headers, uri);
    let page = async {
        let now = app.store.clock().now();
        let list = app.store.schedule_list().await?;
        let rows = list
            .iter()
            .map(|s| ScheduleRow {
                name: s.name.clone(),
                cron: s.cron.clone(),
                timezone: s.timezone.clone(),
                queue: s.job.queue.clone().unwrap_or_else(|| "default".into()),
                kind: s.job.kind.clone(),
                enabled: s.enabled,
                catchup: s.catchup,
                next: when_opt(s.next_run_at, now),
                last: when_opt(s.last_run_at, now),
            })
            .collect();
        Ok(render(StatusCode::OK, &SchedulesPage { chrome: Chrome::new(&v, "Schedules", "schedules", ""), schedules: rows }))
    };
    finish(&v, page.await)
}

pub(crate) struct Flow {
    pub root: JobRow,
    pub nodes: Vec<Node>,
    pub done: usize,
    pub total: usize,
}

#[derive(Template)]
#[template(path = "flows.html")]
struct FlowsPage {
    chrome: Chrome,
    flows: Vec<Flow>,
}

/// `GET /flows`: jobs waiting for others (flows, chords, parents waiting
/// for children), each with what it waits for.
pub(crate) async fn flows<S: Store>(State(app): State<AppState<S>>, headers: HeaderMap, uri: Uri) -> Response {
    let v = signed_in!(app, headers, uri);
    let page = async {
        let now = app.store.clock().now();
        let waiting = app.store.job_list(JobListParams { state: Some(JobState::Waiting), limit: Some(25), ..Default::default() }).await?;
        let mut flows = Vec::new();
        for j in &waiting.jobs {
            let nodes = tree(&app.store, j, 3, false).await?;
            let direct: Vec<&Node> = nodes.iter().filter(|n| n.depth == 1).collect();
            flows.push(Flow {
                root: job_row(j, now),
                done: direct.iter().filter(|n| n.state == "completed").count(),
                total: direct.len(),
                nodes,
            });
        }
        Ok(render(StatusCode::OK, &FlowsPage { chrome: Chrome::new(&v, "Flows", "flows", ""), flows }))
    };
    finish(&v, page.await)
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    q: String,
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    chrome: Chrome,
    q: String,
    by_kind: Vec<JobRow>,
    by_tag: Vec<JobRow>,
    queues: Vec<(String, String)>,
}

/// `GET /search?q=`: a job id opens the job; otherwise jobs of that kind or
/// tag, and queues by that name.
pub(crate) async fn search<S: Store>(State(app): State<AppState<S>>, headers: HeaderMap, uri: Uri, Query(s): Query<SearchQuery>) -> Response {
    let v = signed_in!(app, headers, uri);
    let q = s.q.trim().to_owned();
    let page = async {
        let now = app.store.clock().now();
        if let Ok(id) = JobId::new(q.clone())
            && app.store.job_get(&id).await?.is_some()
        {
            return Ok(Redirect::to(&job_href(id.as_str())).into_response());
        }
        let mut by_kind = Vec::new();
        let mut by_tag = Vec::new();
        if kyu_core::job::is_name(&q) {
            let page = app.store.job_list(JobListParams { kind: Some(q.clone()), limit: Some(50), ..Default::default() }).await?;
            by_kind = page.jobs.iter().map(|j| job_row(j, now)).collect();
        }
        if kyu_core::validate::label("tag", &q).is_ok() {
            let page = app.store.job_list(JobListParams { tag: Some(q.clone()), limit: Some(50), ..Default::default() }).await?;
            by_tag = page.jobs.iter().map(|j| job_row(j, now)).collect();
        }
        let queues = app
            .store
            .queue_list()
            .await?
            .into_iter()
            .filter(|x| !q.is_empty() && x.name.as_str().contains(q.as_str()))
            .map(|x| (x.name.to_string(), queue_href(x.name.as_str())))
            .collect();
        let page = SearchPage { chrome: Chrome::new(&v, format!("Search {q}"), "", ""), q: q.clone(), by_kind, by_tag, queues };
        Ok(render(StatusCode::OK, &page))
    };
    finish(&v, page.await)
}
