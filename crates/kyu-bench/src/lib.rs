//! kyu-bench: the workloads of BENCHMARKS.md, generic over any store, and
//! the raw-SQL ceilings they are reported against.
//!
//! Every workload runs on a fresh, empty store that the caller provides, so
//! one run cannot warm or clutter the next. Figures are throughputs
//! (jobs/s) or latencies (ms); the caller repeats runs and reports medians.

pub mod baseline;
pub mod pgbench;
pub mod workloads;

use serde::Serialize;

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Workload and metric, e.g. `W1 process`.
    pub name: String,
    /// The number.
    pub value: f64,
    /// Its unit, e.g. `jobs/s` or `ms`.
    pub unit: &'static str,
}

impl Figure {
    /// A throughput of `n` jobs in `secs`.
    pub fn rate(name: impl Into<String>, n: usize, secs: f64) -> Figure {
        Figure { name: name.into(), value: n as f64 / secs.max(1e-9), unit: "jobs/s" }
    }
}

/// Median, min and max of a set of runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    /// Middle value.
    pub median: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (at least one).
    pub fn of(values: &[f64]) -> Summary {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Summary { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
    }
}
