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
    /// Re-create what an image's chunks lack on members of its redundant store: shards missing or
    /// invalid on members of a `disperse:` store, copies missing or corrupt on replicas of a `route:`
    /// store (e.g. after a server came back empty or was replaced).
    Repair(RepairArgs),
    /// Copy an image's chunks from its store to another store (parallel, resumable: chunks the target
    /// already holds are skipped) and write a new image that records the new store.
    Copy(CopyArgs),
}

/// Arguments of `thinnode store copy`.
#[derive(clap::Args)]
struct CopyArgs {
    /// The image (manifest) file whose chunks are copied.
    image: PathBuf,
    /// The target store URL.
    #[arg(long)]
    to: String,
    /// Where to write the new image (recording the target store).
    #[arg(long)]
    out: PathBuf,
    /// The source store URL (default: the store recorded in the image).
    #[arg(long)]
    from: Option<String>,
    /// Sign the new image with this private key (the old signature cannot cover the new store list).
    #[arg(long)]
    sign: Option<PathBuf>,
    /// Parallel copy workers.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Chunks per batch (one existence check, one fetch and one store call each).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `thinnode store repair`.
#[derive(clap::Args)]
struct RepairArgs {
    /// The image (manifest) file whose chunks are checked.
    image: PathBuf,
    /// The `disperse:` or `route:` store URL (default: the store recorded in the image).
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

/// A store that keeps chunks redundantly and can restore what its members lack.
enum RedundantStore {
    Dispersed(store::DispersedStore),
    Router(store::RouterStore),
}

impl RedundantStore {
    fn open(url: &str) -> anyhow::Result<RedundantStore> {
        let shown = store::redact_url(url);
        if url.trim_start().starts_with(store::ROUTE_PREFIX) {
            let router = store::RouterStore::open(url.trim_start())
                .with_context(|| format!("opening route store {shown}"))?;
            return Ok(RedundantStore::Router(router));
        }
        let dispersed = store::DispersedStore::open(url)
            .with_context(|| format!("opening dispersed store {shown}"))?;
        Ok(RedundantStore::Dispersed(dispersed))
    }

    /// What the store writes back: shards or whole copies.
    fn pieces(&self) -> &'static str {
        match self {
            RedundantStore::Dispersed(_) => "shards",
            RedundantStore::Router(_) => "copies",
        }
    }

    /// Why a chunk cannot be rebuilt.
    fn unrecoverable_because(&self) -> &'static str {
        match self {
            RedundantStore::Dispersed(_) => "fewer than k valid shards",
            RedundantStore::Router(_) => "no valid copy on any replica",
        }
    }

    fn repair(&self, ids: &[store::ChunkId]) -> store::RepairReport {
        match self {
            RedundantStore::Dispersed(s) => s.repair(ids),
            RedundantStore::Router(s) => s.repair(ids),
        }
    }
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
    let repairer = RedundantStore::open(&url)?;
    let ids = image_chunk_ids(&m)?;
    let bar = progress_bar(ids.len() as u64, "chunks");
    let mut total = store::RepairReport::default();
    for batch in ids.chunks(args.batch.max(1)) {
        let report = repairer.repair(batch);
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
            "checked {} chunks: {} degraded, {} {} rewritten, {} unrecoverable",
            total.chunks_checked,
            total.chunks_degraded,
            total.shards_rewritten,
            repairer.pieces(),
            total.unrecoverable.len()
        );
        for f in &total.failures {
            println!("member failed: {}: {}", f.url, f.error);
        }
        for id in &total.unrecoverable {
            println!("unrecoverable ({}): {id}", repairer.unrecoverable_because());
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

/// Copies one batch: the chunks the target lacks are fetched from the source and stored. Returns how many
/// were copied.
fn copy_batch(
    source: &dyn store::ChunkStore,
    target: &dyn store::ChunkStore,
    ids: &[store::ChunkId],
) -> anyhow::Result<usize> {
    let held = target.has_many(ids).context("checking the target")?;
    let missing: Vec<store::ChunkId> = ids
        .iter()
        .zip(held)
        .filter(|(_, h)| !h)
        .map(|(id, _)| *id)
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let values = source.get_many(&missing).context("reading the source")?;
    let mut items = Vec::with_capacity(missing.len());
    for (id, value) in missing.iter().zip(&values) {
        let data = value
            .as_deref()
            .with_context(|| format!("chunk {id} is missing from the source store"))?;
        anyhow::ensure!(
            store::ChunkId::of(data) == *id,
            "chunk {id} read from the source does not match its id"
        );
        items.push((*id, data));
    }
    target.put_many(&items).context("writing the target")?;
    Ok(items.len())
}

fn copy(args: CopyArgs) -> anyhow::Result<()> {
    let m = open_image(&args.image, None)?;
    let source = super::unpack::open_store(args.from.as_deref(), &m)?;
    let target = store::open(&args.to)
        .with_context(|| format!("opening target store {}", store::redact_url(&args.to)))?;
    let signer = super::key::read_signer(args.sign.as_deref())?;
    let ids = image_chunk_ids(&m)?;
    let batches: Vec<&[store::ChunkId]> = ids.chunks(args.batch.max(1)).collect();
    let bar = progress_bar(ids.len() as u64, "chunks");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let copied = std::sync::atomic::AtomicUsize::new(0);
    let started = std::time::Instant::now();
    let outcome: anyhow::Result<()> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.jobs.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(batch) = batches.get(i) else {
                            return Ok(());
                        };
                        let n = copy_batch(source.as_ref(), target.as_ref(), batch)?;
                        copied.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        bar.inc(batch.len() as u64);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a copy worker panicked"))??;
        }
        Ok(())
    });
    bar.finish_and_clear();
    outcome.context("copying chunks (re-run to resume: copied chunks are skipped)")?;
    let copied = copied.into_inner();

    let bytes =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let rewritten = image::manifest_with_stores(&bytes, &[target.public_url()], signer.as_ref())
        .context("writing the store into the new image")?;
    let tmp = args.out.with_extension("tmp-copy");
    std::fs::write(&tmp, rewritten).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    let summary = serde_json::json!({
        "chunks": ids.len(),
        "copied": copied,
        "already_present": ids.len() - copied,
        "seconds": started.elapsed().as_secs_f64(),
        "store": target.public_url(),
        "image": args.out.display().to_string(),
        "signed": signer.is_some(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "copied {copied} of {} chunks ({} already present) in {:.2} s; wrote {} -> {}",
            ids.len(),
            ids.len() - copied,
            started.elapsed().as_secs_f64(),
            args.out.display(),
            target.public_url()
        );
        if signer.is_none() && m.is_signed() {
            println!("note: the new image is unsigned; pass --sign KEY to sign it");
        }
    }
    Ok(())
}

/// Runs `thinnode store`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Repair(a) => repair(a),
        StoreCommand::Copy(a) => copy(a),
    }
}
