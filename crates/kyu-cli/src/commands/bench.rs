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

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(anyhow::anyhow!("{e}"))
}

pub async fn bench(database: Option<&str>, a: &BenchArgs, json: bool) -> Result<ExitCode, CliError> {
    if a.runs == 0 {
        return Err(CliError::Usage("--runs must be at least 1".into()));
    }
    for w in &a.workloads {
        if !["w1", "w2", "w3", "w4", "w5"].contains(&w.as_str()) {
            return Err(CliError::Usage(format!("unknown workload `{w}` (w1, w2, w3, w4, w5)")));
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
    out
}

/// Runs the selected workloads once, each on a fresh store from `fresh`:
/// the store itself (Rust API), or a server started in this process on it,
/// seen through the HTTP client (HTTP worker protocol). W4 is two runs, on
/// an empty store and on one with retained history.
async fn workloads_on<S, F, Fut>(a: &BenchArgs, samples: &mut Samples, run: usize, mut fresh: F) -> Result<(), CliError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, CliError>>,
{
    let items: Vec<&str> = a
        .workloads
        .iter()
        .flat_map(|w| if w == "w4" { vec!["w4-empty", "w4-retained"] } else { vec![w.as_str()] })
        .collect();
    for w in items {
        tracing::info!(run, workload = %w, via = %a.via, "running");
        let store = fresh().await?;
        let figs = if a.via == "http" {
            // W4's history goes into the store directly: filling a million
            // rows through single HTTP completions would measure nothing new.
            let w = if w == "w4-retained" {
                workloads::fill_history(&store, a.retained).await?;
                "w4-retained-filled"
            } else {
                w
            };
            let (client, stop) = over_http(store).await?;
            let figs = one_workload(a, w, Shape::HTTP, &client).await;
            stop.cancel();
            figs?
        } else {
            one_workload(a, w, Shape::RUST, &store).await?
        };
        record(samples, figs);
    }
    Ok(())
}

async fn one_workload<T: Store>(a: &BenchArgs, w: &str, shape: Shape, store: &T) -> Result<Vec<Figure>, CliError> {
    let mut figs = match w {
        "w1" => workloads::w1(store, shape, a.jobs).await?,
        "w2" => workloads::w2(store, a.single_jobs).await?,
        "w3" => workloads::w3(store, shape, a.latency_jobs).await?,
        "w4-empty" => workloads::w4(store, shape, a.jobs, 0).await?,
        "w4-retained" => workloads::w4(store, shape, a.jobs, a.retained).await?,
        "w4-retained-filled" => workloads::w4(store, shape, a.jobs, 0).await?,
        "w5" => workloads::w5(store, shape, a.children).await?,
        _ => unreachable!("checked above"),
    };
    match w {
        "w4-empty" => figs[0].name = "W4 process (empty)".into(),
        "w4-retained" | "w4-retained-filled" => figs[0].name = "W4 process (retained)".into(),
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
            async move { SqliteStore::open(path, SqliteOptions::default()).map_err(failed) }
        };
        workloads_on(a, &mut samples, run, fresh).await?;
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
    let mut schemas: Vec<String> = Vec::new();
    let mut result = Ok(());
    for run in 1..=a.runs {
        let mut n = 0;
        let created = &mut schemas;
        let fresh = || {
            n += 1;
            let schema = format!("kyu_bench_{tag}_{run}_{n}");
            created.push(schema.clone());
            let opts = PgOptions { schema: Some(schema), pool_size: 16, ..PgOptions::default() };
            let url = url.to_owned();
            async move { PgStore::connect(&url, opts).await.map_err(failed) }
        };
        result = workloads_on(a, &mut samples, run, fresh).await;
        if result.is_err() {
            break;
        }
        let schema = format!("kyu_bench_{tag}_{run}_ceiling");
        // A store connection creates the schema (and kyu's tables, unused here).
        PgStore::connect(url, PgOptions { schema: Some(schema.clone()), pool_size: 1, ..PgOptions::default() })
            .await
            .map_err(failed)?;
        schemas.push(schema.clone());
        for k in [1, 10, 100] {
            tracing::info!(run, k, "PostgreSQL ceiling (pgbench, 16 clients)");
            let fig = pgbench::pg_ceiling(&pgbench, &pgbench::libpq_url(url), &schema, k, a.ceiling_secs.max(1), &work_dir).map_err(failed)?;
            record(&mut samples, vec![fig]);
        }
    }
    // Drop every scratch schema, even after a failure, connecting through one
    // of them (connecting without one would create kyu's tables in `public`).
    let via = schemas.last().cloned();
    if let Some(via) = via
        && let Ok(admin) = PgStore::connect(url, PgOptions { pool_size: 1, schema: Some(via), ..PgOptions::default() }).await
    {
        for s in &schemas {
            if let Err(e) = admin.drop_schema(s).await {
                tracing::warn!(schema = %s, error = %e, "could not drop a benchmark schema");
            }
        }
    }
    result.map(|_| samples)
}
