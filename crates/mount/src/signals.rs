//! Shutdown signals: SIGTERM, SIGINT and SIGHUP ask a serving process to unmount and exit.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{io_ctx, MountError};

static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_shutdown_signal(_: libc::c_int) {
    SHUTDOWN_REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a shutdown signal arrived since [`install_shutdown_handler`] (for processes that run their
/// own serving loop, such as a node supervisor).
pub fn shutdown_requested() -> bool {
    SHUTDOWN_REQUESTED.load(Ordering::SeqCst)
}

/// Makes SIGTERM, SIGINT and SIGHUP request a clean shutdown (see [`MountedImage::serve`]).
pub fn install_shutdown_handler() -> Result<(), MountError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_shutdown_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| io_ctx(format!("install {sig} handler"))(io::Error::from(e)))?;
    }
    Ok(())
}
