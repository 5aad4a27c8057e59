//! `kyu bench`: the BENCHMARKS.md workloads on this machine, each on a fresh
//! store, with the raw-SQL ceiling measured in the same run.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kyu_bench::{Figure, Summary, baseline, workloads};
use kyu_sqlite::{SqliteOptions, SqliteStore};
use serde::Serialize;

use crate::args::BenchArgs;
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
    backend: String,
    via: &'static str,
    rows: Vec<Row>,
    ratios: BTreeMap<String, f64>,
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
    if database.is_some_and(|d| d.starts_with("postgres")) {
        return Err(CliError::Usage("PostgreSQL benchmarks need the PostgreSQL backend, not built in yet".into()));
    }
    let dir = tempfile::tempdir().map_err(|e| CliError::Failed(e.into()))?;
    let base = database.map(std::path::PathBuf::from).unwrap_or_else(|| dir.path().to_path_buf());
    let mut fresh_n = 0;
    let mut fresh = || -> Result<SqliteStore, CliError> {
        fresh_n += 1;
        let path = base.join(format!("bench-{fresh_n}.db"));
        SqliteStore::open(path, SqliteOptions::default()).map_err(|e| CliError::Failed(anyhow::anyhow!("{e}")))
    };

    let mut samples: BTreeMap<String, (&'static str, Vec<f64>)> = BTreeMap::new();
    let mut record = |figs: Vec<Figure>| {
        for f in figs {
            samples.entry(f.name).or_insert((f.unit, Vec::new())).1.push(f.value);
        }
    };
    for run in 1..=a.runs {
        for w in &a.workloads {
            tracing::info!(run, workload = %w, "running");
            let store = fresh()?;
            let figs = match w.as_str() {
                "w1" => {
                    let f = workloads::w1(&store, a.jobs).await?;
                    let (tx, ops) = store.writer_stats();
                    tracing::info!(transactions = tx, operations = ops, per_tx = ops as f64 / tx.max(1) as f64, "W1 group commit");
                    f
                }
                "w2" => workloads::w2(&store, a.single_jobs).await?,
                "w3" => workloads::w3(&store, a.latency_jobs).await?,
                "w4" => {
                    let mut f = workloads::w4(&store, a.jobs, 0).await?;
                    let store = fresh()?;
                    f.extend(workloads::w4(&store, a.jobs, a.retained).await?);
                    f
                }
                "w5" => workloads::w5(&store, a.children).await?,
                _ => unreachable!(),
            };
            record(figs);
        }
        for k in [1, 16, 100] {
            let path = base.join(format!("ceiling-{run}-{k}.db"));
            let n = if k == 1 { a.jobs.min(2_000) } else { a.jobs };
            record(vec![baseline::sqlite_ceiling(&path, n, k).map_err(|e| CliError::Failed(e.into()))?]);
        }
    }

    let rows: Vec<Row> = samples
        .into_iter()
        .map(|(name, (unit, runs))| Row { name, unit, summary: Summary::of(&runs), runs })
        .collect();
    let median = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.summary.median);
    let mut ratios = BTreeMap::new();
    if let (Some(p), Some(c)) = (median("W1 process"), median("SQLite ceiling k=16")) {
        ratios.insert("W1 process / ceiling k=16".into(), p / c);
    }
    if let (Some(p), Some(c)) = (median("W1 process"), median("SQLite ceiling k=100")) {
        ratios.insert("W1 process / ceiling k=100".into(), p / c);
    }
    if let (Some(p), Some(c)) = (median("W2 enqueue"), median("SQLite ceiling k=1")) {
        ratios.insert("W2 enqueue / ceiling k=1".into(), p / c);
    }
    if let (Some(p), Some(c)) = (median("W5 parent done"), median("W5 without parent")) {
        ratios.insert("W5 parent / without".into(), p / c);
    }
    let report = Report { backend: "sqlite".into(), via: "rust", rows, ratios };
    if json {
        output::json(&report);
    } else {
        println!("kyu bench: sqlite via the Rust API, {} run(s) each, medians (min-max)", a.runs);
        let rows: Vec<Vec<String>> = report
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    format!("{:.1}", r.summary.median),
                    format!("{:.1}-{:.1}", r.summary.min, r.summary.max),
                    r.unit.to_string(),
                ]
            })
            .collect();
        output::table(&["FIGURE", "MEDIAN", "RANGE", "UNIT"], &rows);
        for (k, v) in &report.ratios {
            println!("{k}: {v:.2}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
