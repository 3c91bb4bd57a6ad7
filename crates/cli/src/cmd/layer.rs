//! `thinnode layer`: inspect and reset a node's write layer.

/// Arguments of `thinnode layer`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `thinnode layer`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`thinnode layer` is not built yet")
}
