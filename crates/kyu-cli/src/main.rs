//! `kyu`: the command-line entry point. Thin: parse the arguments, open the
//! store, hand over to a command, and set the exit status in one place
//! (0 success, 1 refused or failed, 2 bad usage).

mod args;
mod commands;
mod config;
mod error;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::error::CliError;

fn main() -> ExitCode {
    // `kyu work` starts this binary again as its watchdog (see
    // commands::work::group); it takes no other arguments.
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("__watchdog") {
        let grace = args.next().and_then(|g| g.parse().ok()).unwrap_or(10_000);
        commands::run_watchdog(grace);
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with exit 0, errors with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing(&cli);
    if !cli.command.is_long_running() {
        // A closed pipe (`kyu jobs | head`) ends a short command quietly, as
        // it ends `ls`, rather than as an error at the next print. Servers and
        // workers keep Rust's default (ignored), since they write to sockets.
        // SAFETY: restoring the default disposition of one signal at start.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let threads = match worker_threads() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("kyu: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kyu: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            if json {
                // The API's error shape, so scripts read one format.
                let body = serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
                println!("{body}");
            } else {
                eprintln!("kyu: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// The async runtime's worker threads: `TOKIO_WORKER_THREADS` if set, else
/// half the cores, at least one. kyu's process mostly waits on its
/// database, whose work runs elsewhere (PostgreSQL's backends; SQLite's
/// writer thread and blocking readers, which are not runtime workers). A
/// worker per core leaves idle workers that are woken to look for work and
/// put back to sleep on every call, and each such hop sits on the path of a
/// single enqueue or claim: on 2 cores beside PostgreSQL one worker enqueued
/// one job at a time 30 % faster than two (W2, docs/benchmarks.md), with W1
/// unchanged on both backends.
fn worker_threads() -> Result<usize, String> {
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("TOKIO_WORKER_THREADS must be a whole number of threads, 1 or more (got {v:?}); unset it for the default")),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))),
    }
}

fn init_tracing(cli: &Cli) {
    let default = if cli.verbose || cli.command.is_long_running() { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KYU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Refused { .. } | CliError::Failed(_) => 1,
        }
    }
}
