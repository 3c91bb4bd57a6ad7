//! `thinnode store`: repair a dispersed store's shards for an image; copy an image's chunks to another
//! store.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::unpack::open_image;

/// Arguments of `thinnode store`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand)]
enum StoreCommand {
    /// Re-create the shards of an image's chunks that are missing or invalid on members of its
    /// dispersed (`disperse:`) store, e.g. after a server came back empty or was replaced.
    Repair(RepairArgs),
}

/// Arguments of `thinnode store repair`.
#[derive(clap::Args)]
struct RepairArgs {
    /// The image (manifest) file whose chunks are checked.
    image: PathBuf,
    /// The dispersed store URL (default: the store recorded in the image).
    #[arg(long, env = "THINNODE_STORE")]
    store: Option<String>,
    /// Chunks checked per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// The chunk ids of an image's unique chunk table.
fn image_chunk_ids(m: &image::ImageManifest) -> anyhow::Result<Vec<store::ChunkId>> {
    let count = u32::try_from(m.unique_chunk_count()).context("too many chunks in the image")?;
    (0..count)
        .map(|i| {
            m.unique_chunk(i)
                .map(|c| c.id)
                .with_context(|| format!("reading chunk record {i}"))
        })
        .collect()
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})"
    )) {
        bar.set_style(style);
    }
    bar
}

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let m = open_image(&args.image, None)?;
    let url = match args.store {
        Some(u) => u,
        None => m
            .stores()
            .into_iter()
            .next()
            .context("the image records no store; pass --store URL")?,
    };
    let dispersed = store::DispersedStore::open(&url)
        .with_context(|| format!("opening dispersed store {}", store::redact_url(&url)))?;
    let ids = image_chunk_ids(&m)?;
    let bar = progress_bar(ids.len() as u64, "chunks");
    let mut total = store::RepairReport::default();
    for batch in ids.chunks(args.batch.max(1)) {
        let report = dispersed.repair(batch);
        total.chunks_checked += report.chunks_checked;
        total.chunks_degraded += report.chunks_degraded;
        total.shards_rewritten += report.shards_rewritten;
        total.unrecoverable.extend(report.unrecoverable);
        for failure in report.failures {
            if !total.failures.contains(&failure) {
                total.failures.push(failure);
            }
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    if args.json {
        let summary = serde_json::json!({
            "chunks_checked": total.chunks_checked,
            "chunks_degraded": total.chunks_degraded,
            "shards_rewritten": total.shards_rewritten,
            "unrecoverable": total.unrecoverable.iter().map(|id| id.to_hex()).collect::<Vec<_>>(),
            "failures": total.failures.iter().map(|f| format!("{}: {}", f.url, f.error)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "checked {} chunks: {} degraded, {} shards rewritten, {} unrecoverable",
            total.chunks_checked,
            total.chunks_degraded,
            total.shards_rewritten,
            total.unrecoverable.len()
        );
        for f in &total.failures {
            println!("member failed: {}: {}", f.url, f.error);
        }
        for id in &total.unrecoverable {
            println!("unrecoverable (fewer than k valid shards): {id}");
        }
    }
    if !total.unrecoverable.is_empty() || !total.failures.is_empty() {
        anyhow::bail!(
            "repair incomplete: {} unrecoverable chunk(s), {} member failure(s)",
            total.unrecoverable.len(),
            total.failures.len()
        );
    }
    Ok(())
}

/// Runs `thinnode store`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Repair(a) => repair(a),
    }
}
