//! `thinnode zdb`: the 0-db compatible server (same flags as 0-db; see the `zdb` crate).

pub use zdb::ServerArgs as Args;

/// Runs the server until SIGTERM/SIGINT.
pub fn run(args: Args) -> anyhow::Result<()> {
    logging::init(if args.verbose { "debug" } else { "info" });
    zdb::run(args)?;
    Ok(())
}
