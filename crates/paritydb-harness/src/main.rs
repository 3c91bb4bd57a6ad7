//! `paritydb-harness`: build, extend and verify a Polkadot-like ParityDB (see the library docs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use paritydb_harness as harness;

/// Build, extend and verify a Substrate-shaped ParityDB database.
#[derive(Parser)]
#[command(name = "paritydb-harness", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new database holding at least SIZE bytes of values (e.g. 1GiB, 200MB).
    Build {
        /// Database directory (created).
        dir: PathBuf,
        /// Amount of value bytes to write: a number with an optional suffix (k, M, G: powers of 10;
        /// KiB, MiB, GiB: powers of 2).
        #[arg(long, default_value = "100MiB", value_parser = units::parse_size)]
        size: u64,
        /// Seed all content derives from.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Append new blocks (new keys): either --blocks N or --fraction F of the existing keys.
    Extend {
        /// Database directory.
        dir: PathBuf,
        /// Number of blocks to append.
        #[arg(long, conflicts_with = "fraction")]
        blocks: Option<u64>,
        /// Fraction of the existing keys to add as new keys (0.001 = 0.1%).
        #[arg(long)]
        fraction: Option<f64>,
    },
    /// Check that every key of every block is present with its exact value.
    Verify {
        /// Database directory.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let start = Instant::now();
    match cli.command {
        Command::Build { dir, size, seed } => {
            let s = harness::build(&dir, size, seed)
                .with_context(|| format!("building {}", dir.display()))?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Extend {
            dir,
            blocks,
            fraction,
        } => {
            let db = harness::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
            let mut meta = harness::read_meta(&db, &dir)?;
            let n = match (blocks, fraction) {
                (Some(b), _) => b,
                (None, Some(f)) => harness::blocks_for_fraction(&meta, f),
                (None, None) => anyhow::bail!("give --blocks N or --fraction F"),
            };
            let s = harness::append_blocks(&db, &mut meta, n)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Verify { dir } => {
            let db = harness::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
            let s = harness::verify(&db, &dir)?;
            println!("{}", serde_json::to_string(&s)?);
        }
    }
    eprintln!("done in {:.2}s", start.elapsed().as_secs_f64());
    Ok(())
}
