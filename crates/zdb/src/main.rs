//! `zdb`: the 0-db compatible server binary, with 0-db's flags (single-dash long options accepted).

use clap::Parser;

/// A 0-db 2.0 compatible key-value server.
#[derive(Parser)]
#[command(name = "zdb", version, about)]
struct Cli {
    #[command(flatten)]
    args: zdb::ServerArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(zdb::normalize_single_dash(std::env::args()));
    zdb::init_logging(cli.args.verbose);
    match zdb::run(cli.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zdb: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
