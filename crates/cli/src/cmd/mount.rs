//! `thinnode mount`: lazy read-only FUSE mount of an image.

/// Arguments of `thinnode mount`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode mount`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode mount` is not built yet")
}
