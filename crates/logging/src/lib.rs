//! The logger every thinnode binary installs: one line per event on stderr, coloured only on a terminal,
//! filtered by `RUST_LOG` when it is set and otherwise by the binary's own default. A crate of its own so
//! that binaries at every layer (the `thinnode` CLI, the `zdb` server, test tools) share it without
//! depending on each other.

#![deny(missing_docs)]

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the logger with `default_filter` (an `EnvFilter` directive such as `"info"` or
/// `"warn,fuser=error"`) unless `RUST_LOG` is set. Does nothing when a logger is already installed, so
/// calling it twice is harmless.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
