//! `thinnode key`: signing keys for images.

/// Arguments of `thinnode key`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode key`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode key` is not built yet")
}
