//! A 0-db 2.0 compatible key-value server: RESP protocol, namespaces, and 0-db's on-disk format.
//!
//! Run it with [`run`] (blocking, as the `zdb` binary and `thinnode zdb` do) or in-process with
//! [`start_background`].
//!
//! # Layout
//!
//! The shape follows tokio-rs/mini-redis:
//!
//! * `server`: start-up and shutdown; `listener`: the accept loop; `workers`: the worker threads, each
//!   with its own event loop.
//! * `connection`: one client: reads requests, answers them in order, one write per batch.
//! * [`protocol`]: the RESP request decoder and the reply encoders (mini-redis' `frame`).
//! * `cmd`: one module per command, and the dispatcher.
//! * `db`: every namespace of a server, shared settings, statistics and WAIT events.
//! * `namespace`: one namespace's files and in-memory key table: open and crash recovery, the write path,
//!   the read path, index walks.
//! * [`format`]: 0-db's on-disk structures, bytes to structs and back, no I/O.
//! * `metrics`: the counters of INFO and `--metrics`; `metrics_http`: the endpoint serving them.
#![deny(missing_docs)]

mod args;
mod cmd;
mod connection;
mod db;
mod error;
pub mod format;
mod hook;
mod listener;
mod metrics;
mod metrics_http;
mod namespace;
pub mod protocol;
mod server;
mod workers;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use args::{normalize_single_dash, ModeArg, ServerArgs};
pub use error::ZdbError;
pub use server::{run, start_background, RunningServer};

/// Installs a stderr logger (`info`, or `debug` with `verbose`; `RUST_LOG` overrides). Does nothing if a
/// logger is already installed.
pub fn init_logging(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
