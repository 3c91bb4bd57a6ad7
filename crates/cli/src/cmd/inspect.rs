//! `thinnode inspect`: describe an image.

/// Arguments of `thinnode inspect`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode inspect`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode inspect` is not built yet")
}
