//! `thinnode zdb`: the 0-db compatible server (same flags as 0-db; see the `zdb` crate).

pub use zdb::ServerArgs as Args;

/// Runs the server until SIGTERM/SIGINT.
pub fn run(args: Args) -> anyhow::Result<()> {
    zdb::init_logging(args.verbose);
    zdb::run(args)?;
    Ok(())
}
