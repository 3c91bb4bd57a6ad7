//! `thinnode pack`: turn a directory into an image, uploading only the chunks the store lacks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `thinnode pack`.
#[derive(clap::Args)]
pub struct Args {
    /// The directory to pack (a node's data directory).
    pub(crate) dir: PathBuf,
    /// Where chunks go: dir://PATH, zdb://[user:pass@]host[:port][/namespace], s3://BUCKET[/PREFIX]?endpoint=…,
    /// route: …, disperse:K+M … (see docs/stores.md).
    #[arg(long, env = "THINNODE_STORE")]
    pub(crate) store: String,
    /// The image (manifest) file to write (with --format fl: the .fl file).
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    encoding: ImageEncodingArgs,
    /// A previous image of the same data whose chunks the store holds: their existence checks are skipped,
    /// and files unchanged since it (path, size, mtime, device, inode number, ctime) are not re-read.
    #[arg(long)]
    base: Option<PathBuf>,
    /// With --base: read every file even when it looks unchanged.
    #[arg(long, requires = "base")]
    reread: bool,
    /// A label KEY=VALUE recorded in the manifest (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Label shortcut: chain name.
    #[arg(long)]
    chain: Option<String>,
    /// Label shortcut: block height.
    #[arg(long)]
    height: Option<u64>,
    /// Label shortcut: block hash.
    #[arg(long)]
    block_hash: Option<String>,
    /// Label shortcut: database type (rocksdb, paritydb, leveldb, ...).
    #[arg(long)]
    db_type: Option<String>,
    /// Encoding threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Threads uploading batches to the store (more help with high-latency stores).
    #[arg(long, default_value_t = 4)]
    upload_threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) flist: super::fl::FlistArgs,
}

/// How an image's chunks are cut, compressed and signed (`pack`, and `convert --to image`).
#[derive(clap::Args)]
pub(crate) struct ImageEncodingArgs {
    /// Chunk size of the image: a power of two from 64KiB to 4MiB.
    #[arg(long, default_value = "1MiB", value_parser = parse_chunk_size)]
    pub(crate) chunk_size: u32,
    /// zstd compression level for the image's chunks.
    #[arg(long, default_value_t = image::DEFAULT_ZSTD_LEVEL)]
    pub(crate) level: i32,
    /// Sign the image's manifest with this secret key (from `thinnode key gen`).
    #[arg(long)]
    pub(crate) sign: Option<PathBuf>,
}

/// Parses a chunk size: a power of two from 64KiB to 4MiB. "64K" and "1M" are SI sizes (see crate
/// `units`) and so refused, with the binary size as a hint, instead of giving chunks that never line up
/// with those of images packed with 64KiB or 1MiB chunks.
pub(crate) fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let v = units::parse_size(s).map_err(|e| e.to_string())?;
    let in_range = u64::from(image::MIN_CHUNK_SIZE)..=u64::from(image::MAX_CHUNK_SIZE);
    if in_range.contains(&v) && v.is_power_of_two() {
        return Ok(v as u32);
    }
    let mut message =
        format!("chunk size {s:?} is {v} bytes: it must be a power of two between 64KiB and 4MiB");
    // "64K" → "64KiB", "1MB" → "1MiB".
    let t = s.trim();
    let stem = t.strip_suffix(['b', 'B']).unwrap_or(t);
    if stem.ends_with(['k', 'K', 'm', 'M']) {
        let binary = format!("{}iB", stem.to_ascii_uppercase());
        if parse_chunk_size(&binary).is_ok() {
            message.push_str(&format!(
                " (k and M are powers of 10: did you mean {binary}?)"
            ));
        }
    }
    Err(message)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("label {s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Shows pack progress as a bar with bytes/s and ETA on stderr (hidden when stderr is not a terminal).
struct Progress {
    bar: ProgressBar,
}

impl image::PackProgress for Progress {
    fn start(&self, total_bytes: u64, _files: u64) {
        self.bar.set_length(total_bytes);
        self.bar.reset_eta();
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}

/// Runs `thinnode pack`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let store = store::open(&args.store).with_context(|| "opening the store".to_string())?;
    let signer = super::key::read_signer(args.encoding.sign.as_deref())?;
    let mut labels = args.labels.clone();
    let shortcuts = [
        ("chain", args.chain.clone()),
        ("height", args.height.map(|h| h.to_string())),
        ("block_hash", args.block_hash.clone()),
        ("db_type", args.db_type.clone()),
    ];
    for (k, v) in shortcuts {
        if let Some(v) = v {
            labels.push((k.to_string(), v));
        }
    }
    let opts = image::PackOptions {
        chunk_size: args.encoding.chunk_size,
        zstd_level: args.encoding.level,
        signer,
        base: args.base.clone(),
        reread: args.reread,
        labels,
        threads: args.threads,
        upload_threads: args.upload_threads.max(1),
        ..Default::default()
    };
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = Progress { bar };
    if args.flist.format == super::fl::Format::Fl {
        if args.encoding.sign.is_some() {
            anyhow::bail!("an flist cannot be signed: --sign does not apply to --format fl");
        }
        let result = super::fl::pack(&args, store.as_ref(), &opts, &progress);
        progress.bar.finish_and_clear();
        return result;
    }
    let result = image::pack(&args.dir, store.as_ref(), &args.out, &opts, Some(&progress));
    progress.bar.finish_and_clear();
    let s = result.with_context(|| format!("packing {}", args.dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("image:     {}", args.out.display());
    println!("store:     {}", store.public_url());
    println!(
        "files:     {} regular, {} directories, {} symlinks, {} special, {} extra hardlinks",
        s.files, s.directories, s.symlinks, s.special_files, s.hardlinks
    );
    if args.base.is_some() {
        println!(
            "unchanged: {} files taken from the base image without reading",
            s.files_unchanged
        );
    }
    println!(
        "bytes:     {:.1} MiB logical, {:.1} MiB in holes",
        mib(s.logical_bytes),
        mib(s.hole_bytes)
    );
    println!(
        "chunks:    {} total, {} unique, {} new, {} reused",
        s.chunks_total, s.chunks_unique, s.chunks_new, s.chunks_reused
    );
    println!(
        "uploaded:  {:.1} MiB of {:.1} MiB stored",
        mib(s.bytes_uploaded),
        mib(s.bytes_stored)
    );
    println!(
        "elapsed:   {:.2} s ({:.0} MiB/s)",
        s.elapsed_secs,
        mib(s.logical_bytes) / s.elapsed_secs.max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_labels_parse() {
        assert_eq!(parse_chunk_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_chunk_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_chunk_size("4MiB"), Ok(4 * 1024 * 1024));
        assert_eq!(parse_chunk_size("131072"), Ok(131072));
        let si = parse_chunk_size("1M").unwrap_err();
        assert!(si.contains("did you mean 1MiB?"), "{si}");
        assert!(parse_chunk_size("64K").unwrap_err().contains("64KiB"));
        assert!(parse_chunk_size("100000").is_err());
        assert!(parse_chunk_size("8MiB").is_err());
        assert!(parse_chunk_size("1KiB").is_err());
        assert!(parse_chunk_size("abc").is_err());
        assert_eq!(
            parse_label("chain=polkadot"),
            Ok(("chain".into(), "polkadot".into()))
        );
        assert_eq!(parse_label("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
    }
}
