//! The `kyu` binary end to end: real processes on a real SQLite file.

#[allow(dead_code)]
mod support;

mod bench;
mod cli;
mod console;
mod deploy;
mod server;
mod observability;
mod postgres;
mod work;
