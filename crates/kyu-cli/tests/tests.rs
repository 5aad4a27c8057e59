//! The `kyu` binary end to end: real processes on a real SQLite file.

mod support;

mod bench;
mod cli;
mod server;
mod postgres;
mod work;
