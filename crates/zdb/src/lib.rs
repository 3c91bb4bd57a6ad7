//! A 0-db 2.0 compatible key-value server: RESP protocol, namespaces, and 0-db's on-disk format.
//!
//! Run it with [`run`] (blocking, as the `zdb` binary and `thinnode zdb` do) or in-process with
//! [`start_background`]. The on-disk format lives in [`format`], one namespace's storage in [`namespace`],
//! command handlers in [`cmd`].

pub mod args;
pub mod cmd;
pub mod connection;
pub mod db;
pub mod error;
pub mod format;
pub mod hook;
pub mod namespace;
pub mod protocol;
pub mod server;

pub use args::{ModeArg, ServerArgs};
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
