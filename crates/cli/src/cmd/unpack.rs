//! `thinnode unpack`: restore an image into a directory.

/// Arguments of `thinnode unpack`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode unpack`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode unpack` is not built yet")
}
