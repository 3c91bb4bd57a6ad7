//! `thinnode convert`: an image to a ThreeFold flist or an flist to an image, re-encoding every chunk
//! for the target format (labels ↔ tags).

use std::path::PathBuf;

use anyhow::Context;

use super::fl::Format;

/// Arguments of `thinnode convert`.
#[derive(clap::Args)]
pub struct Args {
    /// The image or flist to convert (recognised by content), or an http(s):// URL of one.
    input: PathBuf,
    /// What to write: `fl` (a ThreeFold flist) or `image` (a thinnode image).
    #[arg(long, value_enum)]
    to: Format,
    /// Where the converted chunks go (its rfs form becomes an flist's routes). Not with --by-reference.
    #[arg(long, env = "THINNODE_STORE", required_unless_present = "by_reference")]
    store: Option<String>,
    /// With --to image and an flist input: write an image that keeps the flist's blocks by reference
    /// (rfs-block chunks read from the flist's routes; nothing is fetched, re-encoded or uploaded).
    #[arg(long)]
    by_reference: bool,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// Read the input's chunks from this store instead of the one it records (e.g. an flist's route
    /// with the password it lacks).
    #[arg(long)]
    from: Option<String>,
    /// With --to image: how the image is encoded and signed.
    #[command(flatten)]
    encoding: super::pack::ImageEncodingArgs,
    /// With --to fl: keep the store password in the flist's routes (stripped by default, as rfs does).
    #[arg(long)]
    keep_password: bool,
    /// With --to fl: write the flist without the input's extended attributes (refused otherwise).
    #[arg(long)]
    drop_xattrs: bool,
    /// Worker threads (default: twice the core count, at least 4).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `thinnode convert`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let src = super::unpack::open_image(&args.input, None)?;
    if args.by_reference {
        return by_reference(&args, &src);
    }
    let store_url = args.store.clone().context("--store is required")?;
    let src_store = super::unpack::open_store(args.from.as_deref(), &src)?;
    let dst = store::open(&store_url).context("opening the target store")?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let summary = match args.to {
        Format::Fl => {
            if args.encoding.sign.is_some() {
                anyhow::bail!("an flist cannot be signed: --sign does not apply to --to fl");
            }
            let opts = image::FlistOptions {
                store_url: store_url.clone(),
                keep_passwords: args.keep_password,
                drop_xattrs: args.drop_xattrs,
            };
            let (s, w) = image::fl::convert_to_flist(
                &src,
                src_store.as_ref(),
                dst.as_ref(),
                &args.out,
                &opts,
                args.threads,
            )
            .with_context(|| format!("converting {} to an flist", args.input.display()))?;
            if args.json {
                let value = serde_json::json!({ "convert": s, "flist": w });
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            super::fl::report_flist(&args.out, &w);
            s
        }
        Format::Image => {
            let signer = super::key::read_signer(args.encoding.sign.as_deref())?;
            let opts = image::ConvertOptions {
                chunk_size: args.encoding.chunk_size,
                zstd_level: args.encoding.level,
                threads: args.threads,
                ..Default::default()
            };
            let s = image::convert_image(
                &src,
                src_store.as_ref(),
                dst.as_ref(),
                &args.out,
                &opts,
                signer.as_ref(),
            )
            .with_context(|| format!("converting {} to an image", args.input.display()))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!("image:     {}", args.out.display());
            s
        }
    };
    println!("store:     {}", dst.public_url());
    println!(
        "files:     {} ({:.1} MiB, {:.1} MiB in holes)",
        summary.files,
        mib(summary.logical_bytes),
        mib(summary.hole_bytes)
    );
    println!(
        "chunks:    {} total, {} unique, {} new; {:.1} MiB uploaded of {:.1} MiB stored",
        summary.chunks_total,
        summary.chunks_unique,
        summary.chunks_new,
        mib(summary.bytes_uploaded),
        mib(summary.bytes_stored)
    );
    println!("elapsed:   {:.2} s", summary.elapsed_secs);
    Ok(())
}

/// `convert FLIST --to image --by-reference`.
fn by_reference(args: &Args, src: &image::ImageManifest) -> anyhow::Result<()> {
    if args.to != Format::Image || src.source() != image::ManifestSource::Flist {
        anyhow::bail!("--by-reference converts an flist to an image (--to image)");
    }
    let signer = super::key::read_signer(args.encoding.sign.as_deref())?;
    let local = super::remote::local_image(&args.input, &super::remote::default_cache())?;
    image::fl::flist_as_image(&local, &args.out, signer.as_ref())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "image:     {} (the flist's {} blocks by reference, store {})",
        args.out.display(),
        src.unique_chunk_count(),
        src.stores().join(", ")
    );
    Ok(())
}
