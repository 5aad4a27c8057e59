//! Output: aligned tables for people, the API's JSON for scripts.

use kyu_core::{Job, Millis, QueueInfo};
use serde::Serialize;

/// Prints `v` as one line of JSON.
pub fn json(v: &impl Serialize) {
    println!("{}", serde_json::to_string(v).expect("API types serialise"));
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn ts(t: Option<Millis>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_rfc3339())
}

fn compact(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 { format!("{}...", s.chars().take(200).collect::<String>()) } else { s }
}

/// A job as `key: value` lines.
pub fn job_details(job: &Job) {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", job.id.to_string()),
        ("queue", job.queue.to_string()),
        ("kind", job.kind.clone()),
        ("state", job.state.to_string()),
        ("attempt", format!("{} of {}", job.attempt, job.max_attempts)),
        ("priority", job.priority.to_string()),
        ("run_at", job.run_at.to_rfc3339()),
        ("created_at", job.created_at.to_rfc3339()),
        ("started_at", ts(job.started_at)),
        ("finished_at", ts(job.finished_at)),
        ("payload", compact(&job.payload)),
    ];
    if job.state == kyu_core::JobState::Running {
        rows.push(("lease_expires_at", ts(job.lease_expires_at)));
    }
    if let Some(w) = &job.worker {
        rows.push(("worker", w.clone()));
    }
    if !job.depends_on.is_empty() {
        let ids: Vec<&str> = job.depends_on.iter().map(|d| d.as_str()).collect();
        rows.push(("depends_on", format!("{} ({} pending)", ids.join(", "), job.pending_dependencies)));
    }
    if !job.dependents.is_empty() {
        let ids: Vec<&str> = job.dependents.iter().map(|d| d.as_str()).collect();
        rows.push(("dependents", ids.join(", ")));
    }
    if let Some(c) = &job.checkpoint {
        rows.push(("checkpoint", compact(c)));
    }
    if let Some(p) = &job.progress {
        rows.push(("progress", compact(p)));
    }
    if let Some(r) = &job.result {
        rows.push(("result", compact(r)));
    }
    if job.cancel_requested {
        rows.push(("cancel_requested", "true".into()));
    }
    if !job.tags.is_empty() {
        rows.push(("tags", job.tags.join(", ")));
    }
    if let Some(g) = &job.group {
        rows.push(("group", g.clone()));
    }
    if job.duplicate {
        rows.push(("duplicate", "true (nothing new was created)".into()));
    }
    for (k, v) in rows {
        println!("{k:<17}{v}");
    }
    for e in &job.errors {
        println!("{:<17}attempt {} at {}: {}", "error", e.attempt, e.at, e.message);
    }
}

/// Jobs as a table.
pub fn job_table(jobs: &[Job]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.queue.to_string(),
                j.kind.clone(),
                j.state.to_string(),
                format!("{}/{}", j.attempt, j.max_attempts),
                j.created_at.to_rfc3339(),
            ]
        })
        .collect();
    table(&["ID", "QUEUE", "KIND", "STATE", "ATTEMPT", "CREATED"], &rows);
}

/// Queues as a table.
pub fn queue_table(queues: &[QueueInfo]) {
    let n = |q: &QueueInfo, s: &str| q.counts.get(s).copied().unwrap_or(0).to_string();
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let mut limits = Vec::new();
            if let Some(c) = q.concurrency {
                limits.push(format!("concurrency={c}"));
            }
            if let Some(r) = q.rate_limit {
                limits.push(format!("rate={}/{}ms", r.max, r.per_ms));
            }
            if let Some(g) = q.group_concurrency {
                limits.push(format!("per-group={g}"));
            }
            if let Some(t) = q.timeout_ms {
                limits.push(format!("timeout={}", crate::config::human(std::time::Duration::from_millis(t.max(0) as u64))));
            }
            vec![
                q.name.to_string(),
                if q.paused { "paused".into() } else { "active".into() },
                n(q, "queued"),
                n(q, "scheduled"),
                n(q, "waiting"),
                n(q, "running"),
                n(q, "completed"),
                n(q, "failed"),
                n(q, "cancelled"),
                if limits.is_empty() { "-".into() } else { limits.join(" ") },
            ]
        })
        .collect();
    table(
        &["QUEUE", "STATUS", "QUEUED", "SCHEDULED", "WAITING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "LIMITS"],
        &rows,
    );
}
