//! One module per group of commands; each is generic over the store, so the
//! same code runs on SQLite, PostgreSQL or a remote server.

mod admin;
mod bench;
mod enqueue;
mod inspect;
mod pgmeter;
mod schedule;
mod server;
mod work;

use std::process::ExitCode;

use kyu_core::{JobId, QueueName};
use kyu_store::Store;

use crate::args::{Cli, Command, QueueCommand};
use crate::config;

pub use work::run_watchdog;
use crate::error::CliError;

/// Resolves the settings, opens the store they name, and runs the command.
pub async fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    let settings = config::resolve(&cli)?;
    if let Command::Bench(a) = &cli.command {
        let db = (settings.source("database") != "default").then(|| settings.config.database.clone());
        return bench::bench(db.as_deref(), a, cli.json).await;
    }
    if let Command::Server(a) = &cli.command {
        return server::server(&settings, a, cli.json).await;
    }
    if matches!(cli.command, Command::Migrate) {
        return migrate(&settings).await;
    }
    if let Command::Backup { dest } = &cli.command {
        let db = &settings.config.database;
        if is_postgres(db) || settings.server_url()?.is_some() {
            return Err(CliError::Usage("kyu backup copies a SQLite file; back up PostgreSQL with pg_dump".into()));
        }
        if !std::path::Path::new(db).exists() {
            return Err(CliError::Usage(format!("no database at {db}")));
        }
        let store = kyu_sqlite::SqliteStore::open(db, kyu_sqlite::SqliteOptions::default())?;
        store.backup(dest).await?;
        println!("{db} copied to {}", dest.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(url) = settings.server_url()? {
        tracing::info!(url = %url, source = %settings.source("url"), "using the kyu server");
        let c = &settings.config;
        let store = kyu_client::HttpStore::with_ca(&url, c.auth.clone(), c.cacert.as_deref()).map_err(|e| CliError::Usage(e.to_string()))?;
        return run(store, cli, &settings, true).await;
    }
    let db = settings.config.database.clone();
    tracing::info!(database = %db, source = %settings.source("database"), "using the database");
    if is_postgres(&db) {
        let store = kyu_postgres::PgStore::connect(&db, kyu_postgres::PgOptions::default()).await?;
        return run(store, cli, &settings, false).await;
    }
    // Only commands that make jobs (or run a server or workers) create a
    // database; a mistyped path elsewhere is an error, not a new empty file.
    if !cli.command.creates_database() && !std::path::Path::new(&db).exists() {
        return Err(CliError::Usage(format!(
            "no database at {db} (from {}): check --database or KYU_DATABASE_URL; \
             `kyu enqueue`, `kyu batch`, `kyu schedule set`, `kyu server`, `kyu work` and `kyu migrate` create one",
            settings.source("database")
        )));
    }
    let store = kyu_sqlite::SqliteStore::open(&db, kyu_sqlite::SqliteOptions::default())?;
    run(store, cli, &settings, false).await
}

/// `kyu migrate`: opening a store applies its migrations (under a lock, so
/// several nodes may start at once); this does only that, for deploy
/// pipelines that migrate before rolling out new servers.
async fn migrate(settings: &config::Resolved) -> Result<ExitCode, CliError> {
    let db = &settings.config.database;
    if is_postgres(db) {
        kyu_postgres::PgStore::connect(db, kyu_postgres::PgOptions::default()).await?;
    } else {
        kyu_sqlite::SqliteStore::open(db, kyu_sqlite::SqliteOptions::default())?;
    }
    println!("the schema of {} is up to date", redact(db));
    Ok(ExitCode::SUCCESS)
}

/// A database URL without its password, for messages.
pub fn redact(db: &str) -> String {
    match (db.find("://"), db.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &db[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &db[..scheme + 3], &db[at..]),
                None => db.to_owned(),
            }
        }
        _ => db.to_owned(),
    }
}

/// `postgres://` and `postgresql://` URLs name PostgreSQL; anything else is a SQLite path.
pub fn is_postgres(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

async fn run<S: Store>(store: S, cli: Cli, settings: &config::Resolved, remote: bool) -> Result<ExitCode, CliError> {
    let json = cli.json;
    match cli.command {
        Command::Enqueue(a) => enqueue::enqueue(&store, a, json).await,
        Command::Batch { file } => enqueue::batch(&store, &file, json, remote).await,
        Command::Status { id } => inspect::status(&store, &job_id(&id)?, json).await,
        Command::Result { id, wait } => inspect::result(&store, &job_id(&id)?, wait, json).await,
        Command::Jobs(a) => inspect::jobs(&store, a, json).await,
        Command::Queues => inspect::queues(&store, json).await,
        Command::Log { id, attempt } => inspect::log(&store, &job_id(&id)?, attempt, json).await,
        Command::Cancel { id } => admin::cancel(&store, &job_id(&id)?, json).await,
        Command::Retry(a) => admin::retry(&store, a, json).await,
        Command::Delete { id } => admin::delete(&store, &job_id(&id)?).await,
        Command::Pause { queue, create } => admin::pause(&store, queue_name(&queue)?, true, create, json).await,
        Command::Resume { queue, create } => admin::pause(&store, queue_name(&queue)?, false, create, json).await,
        Command::Queue(QueueCommand::Set(a)) => admin::queue_set(&store, a, json).await,
        Command::Work(a) => work::work(store, settings, a, remote, json).await,
        Command::Migrate | Command::Backup { .. } => unreachable!("dispatched before a store is opened"),
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
