//! `thinnode serve-store`: serve a dir store over HTTP.

/// Arguments of `thinnode serve-store`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode serve-store`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode serve-store` is not built yet")
}
