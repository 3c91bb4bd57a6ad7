//! `thinnode`: the command-line front end. Thin glue over the library crates; one module per command
//! group under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

/// Thin-provision blockchain nodes from content-addressed images stored in 0-db.
#[derive(Parser)]
#[command(name = "thinnode", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a 0-db compatible server (same flags as 0-db).
    Zdb(cmd::zdb::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Zdb(args) => cmd::zdb::run(args),
    }
}
