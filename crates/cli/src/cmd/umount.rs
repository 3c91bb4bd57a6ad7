//! `thinnode umount`: unmount a thinnode mount.

/// Arguments of `thinnode umount`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode umount`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode umount` is not built yet")
}
