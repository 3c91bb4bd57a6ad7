//! `thinnode verify`: check an image signature and chunks.

/// Arguments of `thinnode verify`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode verify`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode verify` is not built yet")
}
