//! `thinnode inspect`: describe an image (labels, sizes, counts, dedup ratio).

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `thinnode inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The image (manifest) file or flist, or an http(s):// URL of one.
    image: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `thinnode inspect`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let m = super::unpack::open_image(&args.image, None)?;
    let s = image::image_stats(&m).with_context(|| format!("reading {}", args.image.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("image:        {}", args.image.display());
    match s.source {
        image::ManifestSource::Image => println!(
            "format:       thinnode image v{}, chunk size {} KiB",
            s.format_version,
            s.chunk_size / 1024
        ),
        image::ManifestSource::Flist => println!(
            "format:       rfs flist (.fl), {} KiB blocks (served as a thinnode manifest v{})",
            s.chunk_size / 1024,
            s.format_version
        ),
    }
    println!(
        "signed:       {}",
        s.signer
            .as_deref()
            .map(|k| format!("yes, by {k}"))
            .unwrap_or_else(|| "no".into())
    );
    for url in &s.stores {
        println!("store:        {url}");
    }
    for (k, v) in &s.labels {
        println!("label:        {k}={v}");
    }
    println!(
        "entries:      {} regular files, {} directories, {} symlinks, {} special, {} extra hardlinks",
        s.regular_files, s.directories, s.symlinks, s.special_files, s.hardlinks
    );
    println!(
        "logical:      {:.1} MiB ({:.1} MiB in holes)",
        mib(s.logical_bytes),
        mib(s.sparse_bytes)
    );
    println!(
        "chunks:       {} referenced, {} unique ({:.1} MiB plain, {:.1} MiB stored)",
        s.chunk_refs,
        s.unique_chunks,
        mib(s.unique_bytes),
        mib(s.stored_bytes)
    );
    if s.stored_len_unknown > 0 {
        println!(
            "              (stored size of {} chunks unknown: an flist does not record it)",
            s.stored_len_unknown
        );
    }
    println!("dedup ratio:  {:.2}", s.dedup_ratio);
    println!("compression:  {:.2}", s.compression_ratio);
    println!("manifest:     {:.1} KiB", s.manifest_bytes as f64 / 1024.0);
    Ok(())
}
