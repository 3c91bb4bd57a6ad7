//! `thinnode unpack`: restore an image into a directory.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `thinnode unpack`.
#[derive(clap::Args)]
pub struct Args {
    /// The image (manifest) file or flist, or an http(s):// URL of one.
    image: PathBuf,
    /// The directory to restore into (created; must be empty if it exists).
    dir: PathBuf,
    /// Fetch chunks from this store instead of the one recorded in the image.
    #[arg(long, env = "THINNODE_STORE")]
    store: Option<String>,
    /// Require a valid signature by this public key (a `.pub` file from `thinnode key gen`).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Worker threads (default: twice the core count, at least 4).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Opens the store named on the command line, or else the first one recorded in the image.
pub(crate) fn open_store(
    cli_store: Option<&str>,
    manifest: &image::ImageManifest,
) -> anyhow::Result<std::sync::Arc<dyn store::ChunkStore>> {
    let url = match cli_store {
        Some(u) => u.to_string(),
        None => manifest
            .stores()
            .into_iter()
            .next()
            .context("the image records no store; pass --store URL")?,
    };
    store::open(&url).with_context(|| format!("opening store {}", store::redact_url(&url)))
}

/// Opens an image or flist (a URL is downloaded first, see [`super::remote`]) and, when `trust` is given,
/// checks its signature.
pub(crate) fn open_image(
    path: &std::path::Path,
    trust: Option<&std::path::Path>,
) -> anyhow::Result<image::ImageManifest> {
    let local = super::remote::local_image(path, &super::remote::default_cache())?;
    let m = image::ImageManifest::open(&local)
        .with_context(|| format!("opening image {}", path.display()))?;
    if trust.is_some() && m.source() == image::ManifestSource::Flist {
        anyhow::bail!(
            "{} is an flist, which carries no signature: --trust cannot be satisfied",
            path.display()
        );
    }
    if let Some(t) = trust {
        let key =
            image::read_verifying_key(t).with_context(|| format!("reading {}", t.display()))?;
        m.verify_signature(&key)
            .with_context(|| format!("checking the signature of {}", path.display()))?;
    }
    Ok(m)
}

/// Runs `thinnode unpack`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let m = open_image(&args.image, args.trust.as_deref())?;
    let store = open_store(args.store.as_deref(), &m)?;
    let opts = image::UnpackOptions {
        threads: args.threads,
        ..Default::default()
    };
    let s = image::unpack(&m, store.as_ref(), &args.dir, &opts).with_context(|| {
        format!(
            "unpacking {} into {}",
            args.image.display(),
            args.dir.display()
        )
    })?;
    println!(
        "unpacked {} files ({:.1} MiB), {} directories, {} symlinks, {} special, {} hardlinks in {:.2} s",
        s.files,
        s.bytes_written as f64 / (1024.0 * 1024.0),
        s.directories,
        s.symlinks,
        s.special_files,
        s.hardlinks,
        s.elapsed_secs
    );
    Ok(())
}
