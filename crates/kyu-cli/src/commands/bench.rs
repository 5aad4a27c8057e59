//! `kyu bench`: the BENCHMARKS.md workloads on this machine, each run on a
//! fresh store (a new SQLite file, or a new PostgreSQL schema dropped
//! afterwards), with the raw-SQL ceiling measured in the same run.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use kyu_bench::{Figure, Summary, baseline, pgbench, workloads};
use kyu_postgres::{PgOptions, PgStore};
use kyu_sqlite::{SqliteOptions, SqliteStore};
use kyu_store::Store;
use serde::Serialize;

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
        Some(url) if is_postgres(url) => ("postgresql", bench_postgres(url, a, dir.path().to_path_buf()).await?),
        other => {
            let base = other.map(PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
            ("sqlite", bench_sqlite(base, a).await?)
        }
    };
    let rows: Vec<Row> = samples
        .into_iter()
        .map(|(name, (unit, runs))| Row { name, unit, summary: Summary::of(&runs), runs })
        .collect();
    let ratios = ratios(&rows, backend);
    let report = Report { backend, via: "rust", runs: a.runs, rows, ratios };
    if json {
        output::json(&report);
    } else {
        println!("kyu bench: {backend} via the Rust API, {} run(s) each, medians (min-max)", a.runs);
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

/// Runs the selected workloads `runs` times, each on a store from `fresh`.
async fn workloads_on<S, F, Fut>(a: &BenchArgs, samples: &mut Samples, run: usize, mut fresh: F) -> Result<(), CliError>
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<S, CliError>>,
{
    for w in &a.workloads {
        tracing::info!(run, workload = %w, "running");
        let figs = match w.as_str() {
            "w1" => workloads::w1(&fresh().await?, a.jobs).await?,
            "w2" => workloads::w2(&fresh().await?, a.single_jobs).await?,
            "w3" => workloads::w3(&fresh().await?, a.latency_jobs).await?,
            "w4" => {
                let mut f = workloads::w4(&fresh().await?, a.jobs, 0).await?;
                f[0].name = "W4 process (empty)".into();
                let mut g = workloads::w4(&fresh().await?, a.jobs, a.retained).await?;
                g[0].name = "W4 process (retained)".into();
                f.extend(g);
                f
            }
            "w5" => workloads::w5(&fresh().await?, a.children).await?,
            _ => unreachable!("checked above"),
        };
        record(samples, figs);
    }
    Ok(())
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
            let fig = pgbench::pg_ceiling(&pgbench, &pgbench::libpq_url(url), &schema, k, 5, &work_dir).map_err(failed)?;
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
