//! `thinnode layer`: inspect and reset a node's write layer.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `thinnode layer`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LayerCommand,
}

#[derive(clap::Subcommand)]
enum LayerCommand {
    /// Bytes the layer in DIR uses on disk (allocated blocks of its changes, not apparent sizes).
    Du {
        /// The layer directory.
        dir: PathBuf,
        /// Print a JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Drop every change kept in the layer in DIR (refused while the layer is mounted).
    Reset {
        /// The layer directory.
        dir: PathBuf,
    },
}

/// Runs `thinnode layer`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        LayerCommand::Du { dir, json } => {
            let meta = layer::LayerMetadata::read(&dir)?;
            let usage =
                layer::du(&dir).with_context(|| format!("measuring layer {}", dir.display()))?;
            if json {
                let value = serde_json::json!({
                    "layer": dir,
                    "kind": meta.kind.to_string(),
                    "allocated_bytes": usage.allocated_bytes,
                    "apparent_bytes": usage.apparent_bytes,
                    "files": usage.files,
                    "dirs": usage.dirs,
                    "others": usage.others,
                });
                println!("{value}");
            } else {
                println!(
                    "{} ({} layer): {} bytes allocated, {} bytes apparent, {} files, {} dirs, {} other entries",
                    dir.display(),
                    meta.kind,
                    usage.allocated_bytes,
                    usage.apparent_bytes,
                    usage.files,
                    usage.dirs,
                    usage.others
                );
            }
        }
        LayerCommand::Reset { dir } => {
            layer::reset(&dir).with_context(|| format!("resetting layer {}", dir.display()))?;
            println!("layer {} reset", dir.display());
        }
    }
    Ok(())
}
