//! Command-line arguments.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// kyu: a durable job queue.
///
/// Settings come from flags, then the environment (KYU_*), then a TOML file
/// (--config or KYU_CONFIG), then defaults: a flag always wins.
#[derive(Debug, Parser)]
#[command(name = "kyu", version, about, max_term_width = 100)]
pub struct Cli {
    /// Database: a SQLite file path or a postgres:// URL [default: ./kyu.db] [env: KYU_DATABASE_URL].
    #[arg(long, global = true, help_heading = "Global options")]
    pub database: Option<String>,

    /// Talk to a kyu server (http:// or https://) instead of opening the database [env: KYU_URL].
    #[arg(long, global = true, value_name = "URL", help_heading = "Global options")]
    pub url: Option<String>,

    /// Bearer token for --url [env: KYU_TOKEN].
    #[arg(long = "auth", global = true, value_name = "TOKEN", help_heading = "Global options")]
    pub auth: Option<String>,

    /// A CA certificate (PEM) to trust for https:// URLs, besides the system's [env: KYU_CACERT].
    #[arg(long, global = true, value_name = "PATH", help_heading = "Global options")]
    pub cacert: Option<std::path::PathBuf>,

    /// A TOML file of settings (top-level keys like the long flags, [work] for kyu work) [env: KYU_CONFIG].
    #[arg(long, global = true, value_name = "PATH", help_heading = "Global options")]
    pub config: Option<std::path::PathBuf>,

    /// Print exactly the JSON the HTTP API returns for the same call (errors too).
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Say which database or server is used, and log more.
    #[arg(long, short = 'v', global = true, help_heading = "Global options")]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP API, worker protocol, dashboard, lease rescue and pruning.
    Server(ServerArgs),
    /// Enqueue a job.
    Enqueue(EnqueueArgs),
    /// Enqueue many jobs atomically: a file (or - for stdin) holding
    /// `{"jobs":[...]}` or one job object per line.
    Batch {
        /// The file; `-` reads stdin.
        file: String,
    },
    /// Show a job.
    Status {
        /// Job id.
        id: String,
    },
    /// Print a job's result, optionally waiting for it to finish.
    Result {
        /// Job id.
        id: String,
        /// Wait until the job is finished (at most this long, e.g. 30s; forever if no value).
        #[arg(long, num_args = 0..=1, default_missing_value = "forever", value_name = "DURATION")]
        wait: Option<String>,
    },
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Print a job's log (a command's stderr, a handler's ctx.log), oldest first.
    Log {
        /// Job id.
        id: String,
        /// Only this attempt's lines.
        #[arg(long)]
        attempt: Option<i32>,
    },
    /// List queues with their settings and job counts.
    Queues,
    /// Cancel a job (a running one is asked to stop).
    Cancel {
        /// Job id.
        id: String,
    },
    /// Retry a failed or cancelled job, or with --failed the dead-letter
    /// set by filter (bulk redrive).
    Retry(RetryArgs),
    /// Delete a job that is not running.
    Delete {
        /// Job id.
        id: String,
    },
    /// Pause a queue: claims return nothing until it is resumed.
    Pause {
        /// Queue name.
        queue: String,
        /// Pause it even if no job has made it yet.
        #[arg(long)]
        create: bool,
    },
    /// Resume a paused queue.
    Resume {
        /// Queue name.
        queue: String,
        /// Resume it even if no job has made it yet.
        #[arg(long)]
        create: bool,
    },
    /// A queue's limits: `kyu queue set QUEUE --concurrency 4 --rate 100/1s ...`.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Run a command once per job: payload on stdin, result from stdout.
    Work(WorkArgs),
    /// Cron schedules: each tick enqueues one job.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Measure kyu on this machine: the BENCHMARKS.md workloads against the raw-SQL ceiling.
    Bench(BenchArgs),
    /// Apply the database's schema migrations and exit (for deploy pipelines;
    /// every command also migrates on open).
    Migrate,
    /// Copy the SQLite database, consistently, while it is in use (the
    /// WAL-safe way to back it up; on PostgreSQL use pg_dump).
    Backup {
        /// The new file to write.
        dest: std::path::PathBuf,
    },
}

impl Command {
    /// Commands that run until stopped log at info level by default.
    pub fn is_long_running(&self) -> bool {
        match self {
            Command::Work(a) => !a.print_config,
            Command::Server(a) => !a.print_config,
            Command::Bench(_) => true,
            _ => false,
        }
    }

    /// Commands that may create a new SQLite database file; the others
    /// need one to exist.
    pub fn creates_database(&self) -> bool {
        match self {
            Command::Server(_) | Command::Enqueue(_) | Command::Batch { .. } | Command::Work(_) | Command::Migrate => true,
            // Defining a schedule, or a queue's settings on purpose, before any job.
            Command::Schedule(ScheduleCommand::Set { .. }) => true,
            Command::Pause { create, .. } | Command::Resume { create, .. } => *create,
            Command::Queue(QueueCommand::Set(a)) => a.create,
            _ => false,
        }
    }
}

/// `kyu server`'s flags. Each may also come from the environment or the
/// config file (see `kyu server --print-config`); defaults in brackets.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on, IP:PORT or HOST:PORT [default: 127.0.0.1:7700] [env: KYU_LISTEN].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// API token as ROLE:SECRET (admin, producer or worker; secrets of at
    /// least 8 characters; repeatable) [env: KYU_TOKENS, comma-separated].
    #[arg(long = "token", value_name = "ROLE:SECRET")]
    pub tokens: Vec<String>,
    /// Allow listening beyond loopback without tokens [env: KYU_INSECURE].
    #[arg(long)]
    pub insecure: bool,
    /// Serve HTTPS with this certificate chain (PEM; reloaded on SIGHUP) [env: KYU_TLS_CERT].
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM) [env: KYU_TLS_KEY].
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// How long completed jobs are kept by default [default: 24h] [env: KYU_KEEP_RESULT].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_result: Option<Duration>,
    /// How long failed and cancelled jobs are kept [default: 7d] [env: KYU_KEEP_FAILED].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_failed: Option<Duration>,
    /// Largest payload (and result, checkpoint, progress), in bytes [default: 1048576] [env: KYU_MAX_PAYLOAD].
    #[arg(long, value_name = "BYTES")]
    pub max_payload: Option<usize>,
    /// Largest request body, in bytes [default: 16777216] [env: KYU_MAX_BODY].
    #[arg(long, value_name = "BYTES")]
    pub max_body: Option<usize>,
    /// Longest the server holds a long poll, whatever wait_ms asks [default: 60s] [env: KYU_LONG_POLL_CAP].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub long_poll_cap: Option<Duration>,
    /// Most connections open at once (kept below the file-descriptor limit);
    /// when reached, the longest-idle connection is closed to admit a new
    /// one [default: 1024] [env: KYU_MAX_CONNECTIONS].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// A request's headers must arrive within this; idle keep-alive
    /// connections are closed after it [default: 10s] [env: KYU_HEADER_TIMEOUT].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Option<Duration>,
    /// How long past its time limit a job may run before the store fails
    /// it with "timeout", heartbeats or not [default: 10s] [env: KYU_KILL_GRACE].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub kill_grace: Option<Duration>,
    /// Print the settings in force and where each came from, then exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Queue name.
    pub queue: String,
    /// Job kind (which handler runs it).
    pub kind: String,
    /// Payload as JSON; `-` reads it from stdin. Default: null.
    pub payload: Option<String>,
    /// Job id (default: a generated time-ordered id).
    #[arg(long)]
    pub id: Option<String>,
    /// Run no sooner than this from now (e.g. 500ms, 10s, 5m, 2h; a bare number is milliseconds).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub delay: Option<Duration>,
    /// Run no sooner than this time (RFC 3339).
    #[arg(long, conflicts_with = "delay", value_name = "TIME")]
    pub run_at: Option<String>,
    /// Higher runs first (default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Attempts before the job fails for good (default 5).
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// Per-attempt time limit.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Deduplication key.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// How long the unique key stays taken after enqueue.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "unique_key")]
    pub unique_for: Option<Duration>,
    /// Wait for this job to complete first (repeatable).
    #[arg(long = "depends-on", value_name = "ID")]
    pub depends_on: Vec<String>,
    /// Run even if a dependency fails.
    #[arg(long)]
    pub continue_on_failure: bool,
    /// Label (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Fairness key (tenant, customer).
    #[arg(long)]
    pub group: Option<String>,
    /// How long to keep the job once completed.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_result: Option<Duration>,
    /// How long to keep the job once failed or cancelled.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_failed: Option<Duration>,
    /// Retry backoff: `exponential:BASE:MAX` or `fixed:DELAY` (durations).
    #[arg(long, value_name = "SPEC")]
    pub backoff: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create or replace a schedule.
    Set {
        /// Schedule name.
        name: String,
        /// Cron expression: 5 fields, or 6 with seconds first (quote it).
        #[arg(long)]
        cron: String,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Queue of the jobs it enqueues.
        #[arg(long, default_value = "default")]
        queue: String,
        /// Kind of the jobs it enqueues.
        #[arg(long)]
        kind: String,
        /// Payload of the jobs, as JSON.
        #[arg(long)]
        payload: Option<String>,
        /// After downtime, enqueue every missed tick, not only the latest.
        #[arg(long)]
        catchup: bool,
        /// Keep the schedule but enqueue nothing.
        #[arg(long)]
        disabled: bool,
    },
    /// List schedules.
    List,
    /// Show one schedule.
    Show {
        /// Schedule name.
        name: String,
    },
    /// Delete a schedule (jobs it enqueued stay).
    Delete {
        /// Schedule name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Set a queue's limits (`none` clears one); shows the queue.
    Set(QueueSetArgs),
}

#[derive(Debug, Args)]
pub struct QueueSetArgs {
    /// Queue name.
    pub queue: String,
    /// Most jobs running at once across all workers, or none.
    #[arg(long, value_name = "N|none")]
    pub concurrency: Option<String>,
    /// Most claims per period across all workers, e.g. 100/1s, or none.
    #[arg(long, value_name = "MAX/PERIOD|none")]
    pub rate: Option<String>,
    /// Most jobs running at once per group (tenant), or none.
    #[arg(long, value_name = "N|none")]
    pub group_concurrency: Option<String>,
    /// Default time limit of its jobs (arq's job_timeout), e.g. 5m, or none.
    #[arg(long, value_name = "DURATION|none")]
    pub timeout: Option<String>,
    /// Set it even if no job has made the queue yet.
    #[arg(long)]
    pub create: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Job id (or use --failed to retry many).
    #[arg(required_unless_present = "failed", conflicts_with = "failed")]
    pub id: Option<String>,
    /// Also revive the jobs that failed only because this one did (the rest of a chain).
    #[arg(long, requires = "id")]
    pub dependents: bool,
    /// Retry every failed job that matches the filters below.
    #[arg(long)]
    pub failed: bool,
    /// Retry cancelled jobs instead of failed ones (with --failed).
    #[arg(long, requires = "failed")]
    pub cancelled: bool,
    /// Only jobs of this queue.
    #[arg(long, requires = "failed")]
    pub queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long, requires = "failed")]
    pub kind: Option<String>,
    /// Only jobs whose last error contains this text.
    #[arg(long, requires = "failed")]
    pub error: Option<String>,
    /// Only jobs that finished at or after this: an RFC 3339 time, or a duration ago (2h).
    #[arg(long, requires = "failed", value_name = "TIME")]
    pub since: Option<String>,
    /// Only jobs that finished before this: an RFC 3339 time, or a duration ago.
    #[arg(long, requires = "failed", value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long)]
    pub state: Option<String>,
    /// Only jobs on this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only jobs whose last error contains this text.
    #[arg(long)]
    pub error: Option<String>,
    /// Page size (1-1000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue from a previous page's cursor.
    #[arg(long)]
    pub cursor: Option<String>,
}

/// `kyu work`'s flags. Each may also come from the environment or the
/// `[work]` table of the config file; defaults in brackets.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Queue to take jobs from (repeatable; first listed first) [default: default] [env: KYU_QUEUES, comma-separated].
    #[arg(long = "queue", short = 'q', value_delimiter = ',', value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Commands running at once [default: the number of CPUs] [env: KYU_CONCURRENCY].
    #[arg(long, short = 'c')]
    pub concurrency: Option<usize>,
    /// Most jobs claimed at a time [default: as many as it can take: free slots and the prefetch, at most 1000] [env: KYU_BATCH].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Most jobs held ahead of free slots while the queue has a backlog and
    /// commands are short (a held job starts within about 50 ms); 0 claims
    /// only into free slots [default: 7 × the concurrency] [env: KYU_PREFETCH].
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Lease per claim; heartbeats renew it every third of it [default: 30s] [env: KYU_LEASE].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub lease: Option<Duration>,
    /// How often to look for jobs from other processes when idle [default: 200ms] [env: KYU_POLL].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub poll: Option<Duration>,
    /// On SIGTERM or Ctrl-C, how long running commands may finish before
    /// they are stopped and their jobs released [default: 30s] [env: KYU_GRACE].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
    /// When a command must stop (timeout, cancel, shutdown), its process
    /// group gets SIGTERM, then SIGKILL after this [default: 10s] [env: KYU_KILL_GRACE].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub kill_grace: Option<Duration>,
    /// Worker name shown on jobs [default: host-pid] [env: KYU_WORKER_NAME].
    #[arg(long)]
    pub name: Option<String>,
    /// Take at most N jobs, then exit once they are done [env: KYU_MAX_JOBS].
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u64>,
    /// Exit 0 once no job is ready and none is running [env: KYU_BURST].
    #[arg(long)]
    pub burst: bool,
    /// Largest stdout taken as a result, in bytes; a larger one fails the
    /// attempt without retry [default: 1048576] [env: KYU_MAX_RESULT].
    #[arg(long, value_name = "BYTES")]
    pub max_result: Option<usize>,
    /// Serve this worker's Prometheus metrics on ADDR (/metrics) [env: KYU_METRICS].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Print the settings in force and where each came from, then exit.
    #[arg(long)]
    pub print_config: bool,
    /// The command and its arguments, after `--` [env: KYU_COMMAND; config: work.command].
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads to run, comma-separated: w1,w2,w3,w4,w5, and on PostgreSQL w6 (a held snapshot).
    #[arg(long, default_value = "w1,w2,w3,w5", value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Runs of each workload; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// W1 jobs.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// W2 jobs.
    #[arg(long, default_value_t = 2_000)]
    pub single_jobs: usize,
    /// W3 jobs.
    #[arg(long, default_value_t = 500)]
    pub latency_jobs: usize,
    /// W4 finished jobs kept in the store.
    #[arg(long, default_value_t = 1_000_000)]
    pub retained: usize,
    /// W5 children.
    #[arg(long, default_value_t = 10_000)]
    pub children: usize,
    /// Seconds pgbench runs for each PostgreSQL ceiling.
    #[arg(long, default_value_t = 5)]
    pub ceiling_secs: u32,
    /// Through the Rust API, or through the HTTP worker protocol of a server
    /// started in this process (batch claims of 50).
    #[arg(long, default_value = "rust", value_parser = ["rust", "http"])]
    pub via: String,
}

/// `500ms`, `10s`, `5m`, `2h`, `1d`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 10s, 5m, 2h)"))?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3_600e3,
        "d" => n * 86_400e3,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)")),
    };
    if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("s").is_err());
    }
}
