//! `thinnode pack`: turn a directory into an image.

/// Arguments of `thinnode pack`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode pack`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode pack` is not built yet")
}
