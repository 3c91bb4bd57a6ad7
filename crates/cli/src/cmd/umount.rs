//! `thinnode umount`: unmount a thinnode mount (also cleans a stale one left by a killed daemon).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

/// Arguments of `thinnode umount`.
#[derive(clap::Args)]
pub struct Args {
    /// The mountpoint.
    mountpoint: PathBuf,
    /// Seconds to wait for the daemon to unmount and exit before unmounting directly.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Runs `thinnode umount`.
pub fn run(args: Args) -> anyhow::Result<()> {
    mount::unmount_path(&args.mountpoint, Duration::from_secs(args.timeout))
        .with_context(|| format!("unmount {}", args.mountpoint.display()))?;
    eprintln!("unmounted {}", args.mountpoint.display());
    Ok(())
}
