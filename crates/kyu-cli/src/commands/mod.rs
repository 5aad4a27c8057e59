//! One module per group of commands; each is generic over the store, so the
//! same code runs on SQLite, PostgreSQL or a remote server.

mod admin;
mod bench;
mod enqueue;
mod inspect;
mod schedule;
mod server;
mod work;

use std::process::ExitCode;

use kyu_core::{JobId, QueueName};
use kyu_store::Store;

use crate::args::{Cli, Command};

pub use work::run_watchdog;
use crate::error::CliError;

/// Opens the store the arguments name and runs the command on it.
pub async fn dispatch(cli: Cli, matches: clap::ArgMatches) -> Result<ExitCode, CliError> {
    if let Command::Bench(a) = &cli.command {
        return bench::bench(cli.database.as_deref(), a, cli.json).await;
    }
    let db = cli.database.clone().unwrap_or_else(|| "./kyu.db".into());
    if let Command::Server(a) = &cli.command {
        let sub = matches.subcommand_matches("server").cloned().unwrap_or_default();
        return server::server(&db, &matches, &sub, a).await;
    }
    if let Some(url) = cli.url.clone() {
        if cli.database.is_some() {
            return Err(CliError::Usage("give --url or --database, not both".into()));
        }
        let store = kyu_client::HttpStore::new(&url, cli.auth.clone()).map_err(|e| CliError::Usage(e.to_string()))?;
        return run(store, cli, true).await;
    }
    if is_postgres(&db) {
        let store = kyu_postgres::PgStore::connect(&db, kyu_postgres::PgOptions::default())
            .await
            .map_err(|e| CliError::Failed(anyhow::anyhow!("{e}")))?;
        return run(store, cli, false).await;
    }
    let store = kyu_sqlite::SqliteStore::open(&db, kyu_sqlite::SqliteOptions::default())
        .map_err(|e| CliError::Failed(anyhow::anyhow!("{e}")))?;
    run(store, cli, false).await
}

/// `postgres://` and `postgresql://` URLs name PostgreSQL; anything else is a SQLite path.
pub fn is_postgres(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

async fn run<S: Store>(store: S, cli: Cli, remote: bool) -> Result<ExitCode, CliError> {
    let json = cli.json;
    match cli.command {
        Command::Enqueue(a) => enqueue::enqueue(&store, a, json).await,
        Command::Batch { file } => enqueue::batch(&store, &file, json).await,
        Command::Status { id } => inspect::status(&store, &job_id(&id)?, json).await,
        Command::Result { id, wait } => inspect::result(&store, &job_id(&id)?, wait, json).await,
        Command::Jobs(a) => inspect::jobs(&store, a, json).await,
        Command::Queues => inspect::queues(&store, json).await,
        Command::Log { id, attempt } => inspect::log(&store, &job_id(&id)?, attempt, json).await,
        Command::Cancel { id } => admin::cancel(&store, &job_id(&id)?, json).await,
        Command::Retry(a) => admin::retry(&store, a, json).await,
        Command::Delete { id } => admin::delete(&store, &job_id(&id)?).await,
        Command::Pause { queue } => admin::pause(&store, queue_name(&queue)?, true, json).await,
        Command::Resume { queue } => admin::pause(&store, queue_name(&queue)?, false, json).await,
        Command::Work(a) => work::work(store, a, remote).await,
        Command::Schedule(c) => schedule::schedule(&store, c, json).await,
        Command::Bench(_) | Command::Server(_) => unreachable!("dispatched before a store is opened"),
    }
}

fn job_id(s: &str) -> Result<JobId, CliError> {
    JobId::new(s).map_err(CliError::Usage)
}

fn queue_name(s: &str) -> Result<QueueName, CliError> {
    QueueName::new(s).map_err(CliError::Usage)
}
