//! `thinnode hydrate`: fetch an image into the host cache.

/// Arguments of `thinnode hydrate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode hydrate`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode hydrate` is not built yet")
}
