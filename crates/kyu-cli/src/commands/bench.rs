//! `kyu bench`: the BENCHMARKS.md workloads on this machine, each run on a
//! fresh store (a new SQLite file, or a new PostgreSQL schema dropped
//! afterwards), with the raw-SQL ceiling measured in the same run.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use kyu_bench::workloads::Shape;
use kyu_bench::{Figure, Summary, baseline, pgbench, workloads};
use kyu_postgres::{PgOptions, PgStore};
use kyu_sqlite::{SqliteOptions, SqliteStore};
use kyu_client::HttpStore;
use kyu_server::ServerConfig;
use kyu_store::Store;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::args::BenchArgs;
use crate::commands::is_postgres;
use crate::commands::pgmeter::{self, PgMeter};
use crate::error::CliError;
use crate::output;

#[derive(Serialize)]
struct Row {
    name: String,
    unit: &'static str,
    #[serde(flatten)]
    summary: Summary,
    runs: Vec<f64>,
}

#[derive(Serialize)]
struct Report {
    backend: &'static str,
    via: &'static str,
    runs: usize,
    rows: Vec<Row>,
    ratios: BTreeMap<String, f64>,
}

type Samples = BTreeMap<String, (&'static str, Vec<f64>)>;

fn record(samples: &mut Samples, figs: Vec<Figure>) {
    for f in figs {
        samples.entry(f.name).or_insert((f.unit, Vec::new())).1.push(f.value);
    }
}

/// A failure with its message (also the PostgreSQL meter's).
pub(super) fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(anyhow::anyhow!("{e}"))
}

pub async fn bench(database: Option<&str>, a: &BenchArgs, json: bool) -> Result<ExitCode, CliError> {
    if a.runs == 0 {
        return Err(CliError::Usage("--runs must be at least 1".into()));
    }
    let postgres = database.is_some_and(is_postgres);
    for w in &a.workloads {
        if !["w1", "w2", "w3", "w4", "w5", "w6"].contains(&w.as_str()) {
            return Err(CliError::Usage(format!("unknown workload `{w}` (w1, w2, w3, w4, w5, w6)")));
        }
        if w == "w6" && !postgres {
            return Err(CliError::Usage("w6 (a held snapshot) is a PostgreSQL workload: give --database postgres://...".into()));
        }
    }
    let dir = tempfile::tempdir().map_err(failed)?;
    let (backend, samples) = match database {
        // Fresh schemas per run, so kyu's own `schema=` is not used here.
        Some(url) if is_postgres(url) => ("postgresql", bench_postgres(&pgbench::libpq_url(url), a, dir.path().to_path_buf()).await?),
        // Fresh files per run, beside the given path (which is not touched).
        other => {
            let base = other
                .map(|p| PathBuf::from(p).parent().map(|d| d.to_path_buf()).unwrap_or_default())
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or_else(|| dir.path().to_path_buf());
            ("sqlite", bench_sqlite(base, a).await?)
        }
    };
    let rows: Vec<Row> = samples
        .into_iter()
        .map(|(name, (unit, runs))| Row { name, unit, summary: Summary::of(&runs), runs })
        .collect();
    let ratios = ratios(&rows, backend);
    let via = if a.via == "http" { "http" } else { "rust" };
    let report = Report { backend, via, runs: a.runs, rows, ratios };
    if json {
        output::json(&report);
    } else {
        let how = if via == "http" { "the HTTP worker protocol (claims of 50)" } else { "the Rust API" };
        println!("kyu bench: {backend} via {how}, {} run(s) each, medians (min-max)", a.runs);
        let rows: Vec<Vec<String>> = report
            .rows
            .iter()
            .map(|r| {
                let f = |v: f64| if r.unit == "jobs/s" { format!("{v:.0}") } else { format!("{v:.2}") };
                vec![r.name.clone(), f(r.summary.median), format!("{}-{}", f(r.summary.min), f(r.summary.max)), r.unit.to_string()]
            })
            .collect();
        output::table(&["FIGURE", "MEDIAN", "RANGE", "UNIT"], &rows);
        for (k, v) in &report.ratios {
            println!("{k}: {v:.2}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// kyu's figure over the baseline from the same run: the number that
/// travels between machines.
fn ratios(rows: &[Row], backend: &str) -> BTreeMap<String, f64> {
    let median = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.summary.median);
    let ceiling = if backend == "sqlite" { "SQLite ceiling" } else { "PostgreSQL ceiling" };
    let mut out = BTreeMap::new();
    let mut ratio = |label: String, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            out.insert(label, a / b);
        }
    };
    for k in [1, 10, 16, 100] {
        let c = format!("{ceiling} k={k}");
        ratio(format!("W1 process / {c}"), median("W1 process"), median(&c));
    }
    let c1 = format!("{ceiling} k=1");
    ratio(format!("W2 enqueue / {c1}"), median("W2 enqueue"), median(&c1));
    ratio("W4 retained / empty".into(), median("W4 process (retained)"), median("W4 process (empty)"));
    ratio("W5 parent / without".into(), median("W5 parent done"), median("W5 without parent"));
    ratio("W6 held / no snapshot".into(), median("W6 process (held snapshot)"), median("W6 process (no snapshot)"));
    // Per-job costs against the ceiling k=100's, which W1 is judged by.
    for what in ["WAL/job", "commits/job"] {
        let c = format!("{ceiling} k=100 {what}");
        for w in ["W1", "W4 (empty)", "W4 (retained)", "W6 (no snapshot)", "W6 (held snapshot)"] {
            ratio(format!("{w} {what} / {c}"), median(&format!("{w} {what}")), median(&c));
        }
    }
    out
}

/// Runs the selected workloads once, each on a fresh store from `fresh`:
/// the store itself (Rust API), or a server started in this process on it,
/// seen through the HTTP client (HTTP worker protocol). W4 and W6 are two
/// runs each, without and with what they add. `fresh` also gives the
/// store's PostgreSQL schema, which `meter` measures WAL, commits and dead
/// tuples in.
async fn workloads_on<S, F, Fut>(
    a: &BenchArgs,
    samples: &mut Samples,
    run: usize,
    meter: Option<&PgMeter>,
    mut fresh: F,
) -> Result<(), CliError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(S, String), CliError>>,
{
    let items: Vec<&str> = a
        .workloads
        .iter()
        .flat_map(|w| match w.as_str() {
            "w4" => vec!["w4-empty", "w4-retained"],
            "w6" => vec!["w6-without", "w6-held"],
            w => vec![w],
        })
        .collect();
    for w in items {
        tracing::info!(run, workload = %w, via = %a.via, "running");
        let (store, schema) = fresh().await?;
        // W4's history goes into the store directly and is not measured:
        // filling a million rows through HTTP completions would measure
        // nothing new.
        if w == "w4-retained" {
            workloads::fill_history(&store, a.retained).await?;
        }
        // Both W4 stores start vacuumed and analyzed (see PgMeter::vacuum).
        if let (Some(m), true) = (meter, w.starts_with("w4")) {
            m.vacuum(&schema).await?;
        }
        let held = match (w, meter) {
            ("w6-held", Some(m)) => Some(m.hold_snapshot().await?),
            _ => None,
        };
        let before = match meter {
            Some(m) => Some(m.mark().await?),
            None => None,
        };
        let figs = if a.via == "http" {
            let (client, stop) = over_http(store).await?;
            let figs = one_workload(a, w, Shape::HTTP, &client).await;
            stop.cancel();
            figs?
        } else {
            let figs = one_workload(a, w, Shape::RUST, &store).await;
            drop(store);
            figs?
        };
        if let (Some(m), Some(before)) = (meter, before) {
            m.wait_closed(&schema).await?;
            record(samples, m.figures(label_of(w), before, jobs_of(a, w), &schema).await?);
        }
        if let Some(h) = held {
            h.release().await?;
        }
        record(samples, figs);
    }
    Ok(())
}

/// How a workload's per-job figures are named.
fn label_of(w: &str) -> &'static str {
    match w {
        "w2" => "W2",
        "w3" => "W3",
        "w4-empty" => "W4 (empty)",
        "w4-retained" => "W4 (retained)",
        "w5" => "W5",
        "w6-without" => "W6 (no snapshot)",
        "w6-held" => "W6 (held snapshot)",
        _ => "W1",
    }
}

/// The jobs a workload runs, which its per-job figures divide by.
fn jobs_of(a: &BenchArgs, w: &str) -> u64 {
    (match w {
        "w2" => a.single_jobs,
        "w3" => a.latency_jobs,
        "w5" => 2 * a.children + 1,
        _ => a.jobs,
    }) as u64
}

async fn one_workload<T: Store>(a: &BenchArgs, w: &str, shape: Shape, store: &T) -> Result<Vec<Figure>, CliError> {
    let mut figs = match w {
        "w1" => workloads::w1(store, shape, a.jobs).await?,
        "w2" => workloads::w2(store, a.single_jobs).await?,
        "w3" => workloads::w3(store, shape, a.latency_jobs).await?,
        // The retained history is already in the store (see workloads_on).
        "w4-empty" | "w4-retained" => workloads::w4(store, shape, a.jobs, 0).await?,
        "w5" => workloads::w5(store, shape, a.children).await?,
        "w6-without" | "w6-held" => workloads::w1(store, shape, a.jobs).await?.split_off(1),
        _ => unreachable!("checked above"),
    };
    match w {
        "w4-empty" => figs[0].name = "W4 process (empty)".into(),
        "w4-retained" => figs[0].name = "W4 process (retained)".into(),
        "w6-without" => figs[0].name = "W6 process (no snapshot)".into(),
        "w6-held" => figs[0].name = "W6 process (held snapshot)".into(),
        _ => {}
    }
    Ok(figs)
}

/// Starts a server on `store` on a free loopback port; returns a client for
/// it and the token that stops it.
async fn over_http<S: Store>(store: S) -> Result<(HttpStore, CancellationToken), CliError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(failed)?;
    let url = format!("http://{}", listener.local_addr().map_err(failed)?);
    let stop = CancellationToken::new();
    let config = ServerConfig { maintenance: None, ..ServerConfig::default() };
    tokio::spawn(kyu_server::serve_on(listener, store, config, stop.clone()));
    let client = HttpStore::new(&url, None).map_err(failed)?.with_claim_wait(std::time::Duration::from_millis(500));
    Ok((client, stop))
}

async fn bench_sqlite(base: PathBuf, a: &BenchArgs) -> Result<Samples, CliError> {
    let mut samples = Samples::new();
    let mut n = 0;
    for run in 1..=a.runs {
        let fresh = || {
            n += 1;
            let path = base.join(format!("bench-{}-{n}.db", std::process::id()));
            async move { Ok((SqliteStore::open(path, SqliteOptions::default()).map_err(failed)?, String::new())) }
        };
        workloads_on(a, &mut samples, run, None, fresh).await?;
        for k in [1, 16, 100] {
            let path = base.join(format!("ceiling-{}-{run}-{k}.db", std::process::id()));
            let jobs = if k == 1 { a.jobs.min(2_000) } else { a.jobs };
            record(&mut samples, vec![baseline::sqlite_ceiling(&path, jobs, k).map_err(failed)?]);
        }
    }
    Ok(samples)
}

async fn bench_postgres(url: &str, a: &BenchArgs, work_dir: PathBuf) -> Result<Samples, CliError> {
    let pgbench = pgbench::find_pgbench()
        .ok_or_else(|| CliError::Failed(anyhow::anyhow!("pgbench not found: install PostgreSQL's client tools")))?;
    let mut samples = Samples::new();
    let tag = format!("{}_{}", std::process::id(), kyu_core::Clock::system().now().0);
    // The meter's connections, and the ceiling's table, live in a schema of
    // their own (with kyu's tables, unused).
    let base = format!("kyu_bench_{tag}_base");
    let mut schemas: Vec<String> = vec![base.clone()];
    let meter = PgMeter::connect(url, &base).await?;
    let mut result = Ok(());
    for run in 1..=a.runs {
        let mut n = 0;
        let created = &mut schemas;
        let fresh = || {
            n += 1;
            let schema = format!("kyu_bench_{tag}_{run}_{n}");
            created.push(schema.clone());
            let opts = PgOptions { schema: Some(schema.clone()), pool_size: 16, ..PgOptions::default() };
            let url = pgmeter::named(url, &schema);
            async move { Ok((PgStore::connect(&url, opts).await.map_err(failed)?, schema)) }
        };
        result = workloads_on(a, &mut samples, run, Some(&meter), fresh).await;
        if result.is_err() {
            break;
        }
        for k in [1, 10, 100] {
            tracing::info!(run, k, "PostgreSQL ceiling (pgbench, 16 clients)");
            let before = meter.mark().await?;
            let c = pgbench::pg_ceiling(&pgbench, &pgbench::libpq_url(url), &base, k, a.ceiling_secs.max(1), &work_dir).map_err(failed)?;
            meter.wait_closed("pgbench").await?;
            let label = c.figure.name.clone();
            record(&mut samples, meter.figures(&label, before, c.jobs, &base).await?);
            record(&mut samples, vec![c.figure]);
        }
    }
    drop(meter);
    // Drop every scratch schema, even after a failure, connecting through one
    // of them (connecting without one would create kyu's tables in `public`).
    let via = schemas.last().cloned();
    if let Some(via) = via
        && let Ok(admin) = PgStore::connect(url, PgOptions { pool_size: 1, schema: Some(via), listen: false, ..PgOptions::default() }).await
    {
        for s in &schemas {
            if let Err(e) = admin.drop_schema(s).await {
                tracing::warn!(schema = %s, error = %e, "could not drop a benchmark schema");
            }
        }
    }
    result.map(|_| samples)
}
