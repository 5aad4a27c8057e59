//! The raw-SQL ceiling on PostgreSQL, measured with pgbench at 16 clients:
//! per group of k jobs, insert them, claim k with `UPDATE ... WHERE id IN
//! (SELECT ... FOR UPDATE SKIP LOCKED LIMIT k)`, and mark the claimed ones
//! done, each statement its own transaction, durability as configured.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Figure;

/// pgbench from PATH or Debian's PostgreSQL directories.
pub fn find_pgbench() -> Option<PathBuf> {
    let on_path = Command::new("pgbench").arg("--version").output().is_ok_and(|o| o.status.success());
    if on_path {
        return Some(PathBuf::from("pgbench"));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

const SETUP: &str = "\
    CREATE TABLE IF NOT EXISTS ceiling_job (id bigserial PRIMARY KEY, queue text NOT NULL, state text NOT NULL, \
      priority int NOT NULL DEFAULT 0, args jsonb, token text); \
    CREATE INDEX IF NOT EXISTS ceiling_claim ON ceiling_job (queue, priority, id) WHERE state = 'queued'; \
    CREATE INDEX IF NOT EXISTS ceiling_running ON ceiling_job (token) WHERE state = 'running'; \
    TRUNCATE ceiling_job;";

fn script(k: usize) -> String {
    format!(
        "INSERT INTO ceiling_job (queue, state, args) SELECT 'q', 'queued', '{{}}' FROM generate_series(1, {k});\n\
         UPDATE ceiling_job SET state = 'running', token = :client_id WHERE id IN (SELECT id FROM ceiling_job \
         WHERE queue = 'q' AND state = 'queued' ORDER BY priority, id LIMIT {k} FOR UPDATE SKIP LOCKED);\n\
         UPDATE ceiling_job SET state = 'completed' WHERE token = :client_id::text AND state = 'running';\n"
    )
}

/// One ceiling run: its rate and how many jobs it completed.
pub struct Ceiling {
    /// Jobs per second.
    pub figure: Figure,
    /// Jobs completed (for per-job WAL and commits).
    pub jobs: u64,
}

/// Runs the ceiling for `k` jobs per group for `secs` seconds in `schema`
/// (created by the caller) on the server at `url`. The run's connections
/// are named `pgbench` in `pg_stat_activity`.
pub fn pg_ceiling(pgbench: &Path, url: &str, schema: &str, k: usize, secs: u32, work_dir: &Path) -> Result<Ceiling, String> {
    let file = work_dir.join(format!("ceiling-{k}.sql"));
    std::fs::write(&file, script(k)).map_err(|e| e.to_string())?;
    let setup = Command::new(pgbench)
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .args(["-n", "-t", "1", "-c", "1", "-f"])
        .arg(write_setup(work_dir)?)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    if !setup.status.success() {
        return Err(format!("pgbench setup failed: {}", String::from_utf8_lossy(&setup.stderr)));
    }
    let out = Command::new(pgbench)
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .args(["-n", "-c", "16", "-j", "2", "-T", &secs.to_string(), "-f"])
        .arg(&file)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr)));
    }
    let tps: f64 = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench output: {text}"))?;
    let runs: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(['/', ' ']).next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no transaction count in pgbench output: {text}"))?;
    let figure = Figure { name: format!("PostgreSQL ceiling k={k}"), value: tps * k as f64, unit: "jobs/s" };
    Ok(Ceiling { figure, jobs: runs * k as u64 })
}

fn write_setup(dir: &Path) -> Result<PathBuf, String> {
    let f = dir.join("ceiling-setup.sql");
    std::fs::write(&f, SETUP).map_err(|e| e.to_string())?;
    Ok(f)
}

/// The URL without kyu's own `schema=` parameter, for libpq.
pub fn libpq_url(url: &str) -> String {
    match url.split_once('?') {
        None => url.to_owned(),
        Some((base, q)) => {
            let rest: Vec<&str> = q.split('&').filter(|kv| !kv.starts_with("schema=")).collect();
            if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) }
        }
    }
}
