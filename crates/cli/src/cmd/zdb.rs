//! `thinnode zdb`: the 0-db compatible server.

/// Arguments of `thinnode zdb`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the server until it is stopped.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the zdb server is not built yet")
}
