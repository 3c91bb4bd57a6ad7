//! `thinnode store`: copy an image's chunks between stores, repair dispersed stores.

/// Arguments of `thinnode store`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode store`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode store` is not built yet")
}
