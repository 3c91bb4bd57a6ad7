//! `thinnode`: the command-line front end. Thin glue over the library crates; one module per command
//! under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

/// The version line: the crate version and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("THINNODE_GIT_COMMIT"),
    ")"
);

/// Thin-provision blockchain nodes from content-addressed images stored in 0-db.
#[derive(Parser)]
#[command(name = "thinnode", version = VERSION, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a 0-db compatible server (same flags as 0-db).
    Zdb(cmd::zdb::Args),
    /// Manage image signing keys.
    Key(cmd::key::Args),
    /// Pack a directory into an image, uploading only chunks the store lacks.
    Pack(cmd::pack::Args),
    /// Restore an image into a directory.
    Unpack(cmd::unpack::Args),
    /// Convert an image to a ThreeFold flist (.fl) or an flist to an image.
    Convert(cmd::convert::Args),
    /// Check an image's signature and, with --deep, every chunk.
    Verify(cmd::verify::Args),
    /// Describe an image: labels, sizes, counts, dedup ratio.
    Inspect(cmd::inspect::Args),
    /// Mount an image read-only, fetching chunks lazily.
    Mount(cmd::mount::Args),
    /// Unmount a thinnode mount (also cleans a stale one).
    Umount(cmd::umount::Args),
    /// Fetch a mounted image or an image file into the host cache.
    Hydrate(cmd::hydrate::Args),
    /// Inspect or reset a node's write layer.
    Layer(cmd::layer::Args),
    /// Serve a dir:// store over HTTP (read-only), for http(s):// stores and CDNs.
    ServeStore(cmd::serve_store::Args),
    /// Copy an image's chunks to another store, or repair a dispersed store.
    Store(cmd::store::Args),
    /// Turn a stopped node's data directory into a base image (refusing node secrets).
    Base(cmd::base::Args),
    /// Provision and run nodes from a base image: create, start, stop, ls, logs, reset, promote, rm.
    Node(cmd::node::Args),
    /// Print a shell completion script (e.g. `thinnode completions bash > /etc/bash_completion.d/thinnode`).
    Completions(cmd::completions::CompletionsArgs),
    /// Print the man page, or write every page with --out DIR.
    Man(cmd::completions::ManArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Zdb(a) => cmd::zdb::run(a),
        Command::Key(a) => cmd::key::run(a),
        Command::Pack(a) => cmd::pack::run(a),
        Command::Unpack(a) => cmd::unpack::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Umount(a) => cmd::umount::run(a),
        Command::Hydrate(a) => cmd::hydrate::run(a),
        Command::Layer(a) => cmd::layer::run(a),
        Command::ServeStore(a) => cmd::serve_store::run(a),
        Command::Store(a) => cmd::store::run(a),
        Command::Base(a) => cmd::base::run(a),
        Command::Node(a) => cmd::node::run(a),
        Command::Completions(a) => cmd::completions::completions(a),
        Command::Man(a) => cmd::completions::man(a),
    }
}
