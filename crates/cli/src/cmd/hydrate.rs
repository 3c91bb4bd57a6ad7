//! `thinnode hydrate`: fetch a mounted image or an image file into the host cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mount::{hydrate, HydrateOptions, HydrateProgress};
use mount::{CacheConfig, FetchConfig, Fetcher, HostCache, Metrics};
use units::{parse_rate, parse_size};

/// Arguments of `thinnode hydrate`.
#[derive(clap::Args)]
pub struct Args {
    /// A thinnode mountpoint (its image, cache and stores are used), an image file or flist, or an
    /// http(s):// URL of one.
    target: PathBuf,
    /// Bandwidth cap on fetched bytes (e.g. 200MB/s); unlimited when absent.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// Fetch the chunks of this access trace (from `mount --record-trace`) first.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Only these paths inside the image (files or directories, repeatable).
    #[arg(long = "file")]
    files: Vec<String>,
    /// The host cache (for an image file; a mountpoint uses its own).
    #[arg(long, env = "THINNODE_CACHE", default_value = mount::DEFAULT_CACHE_DIR)]
    cache: PathBuf,
    /// Size limit of the host cache (for an image file).
    #[arg(long, default_value = "50GiB", value_parser = parse_size)]
    cache_size: u64,
    /// Read chunks from this store instead of the image's (repeatable).
    #[arg(long = "store")]
    stores: Vec<String>,
    /// Parallel fetches.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Runs `thinnode hydrate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    logging::init("warn");

    let record = if args.target.is_dir() {
        let mnt = mount::absolute_mountpoint(&args.target)?;
        Some(
            mount::read_record(&mnt)
                .with_context(|| format!("{} is not a running thinnode mount", mnt.display()))?,
        )
    } else {
        None
    };
    let (image, cache_dir, cache_size, overrides) = match &record {
        Some(r) => (
            r.image.clone(),
            r.cache_dir.clone(),
            r.cache_max_bytes,
            if args.stores.is_empty() {
                r.store_overrides.clone()
            } else {
                args.stores.clone()
            },
        ),
        None => (
            super::remote::local_image(&args.target, &args.cache)?,
            args.cache.clone(),
            args.cache_size,
            args.stores.clone(),
        ),
    };
    let manifest = mount::open_image(&image, None)?;
    let stores = mount::open_stores(&manifest.stores(), &overrides)?;
    if stores.is_empty() {
        anyhow::bail!("the image records no store; pass --store");
    }
    let cache = HostCache::open(&CacheConfig {
        dir: cache_dir,
        max_bytes: cache_size,
        durable: true,
    })?;
    let metrics = Arc::new(Metrics::new());
    let fetcher = Fetcher::new(
        stores,
        cache,
        Arc::clone(&metrics),
        FetchConfig {
            workers: 1,
            rate_limit: args.rate,
            ..FetchConfig::default()
        },
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    };
    let on_progress = |p: &HydrateProgress| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    };
    let options = HydrateOptions {
        parallel: args.parallel.max(1),
        paths: args.files.clone(),
        trace: args.trace.clone(),
    };
    let started = Instant::now();
    let report = hydrate(&manifest, &fetcher, &options, &on_progress)?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "hydrated {} chunks ({} bytes) in {secs:.2} s: {} already cached, {} fetched ({} stored bytes), {} failed, {} files sealed (passthrough-ready)",
        report.chunks,
        report.bytes,
        report.already_cached,
        metrics.chunks_fetched.get(),
        metrics.bytes_fetched.get(),
        report.failed,
        report.files_sealed
    );
    for (r, e) in &report.failures {
        eprintln!("  chunk {}: {e}", r.id);
    }
    if report.failed > 0 {
        anyhow::bail!("{} chunk(s) could not be fetched", report.failed);
    }
    Ok(())
}
