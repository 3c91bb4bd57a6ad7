//! `thinnode verify`: check an image's signature, structure and (with --deep) every chunk.

use std::path::PathBuf;

use anyhow::Context;

use super::unpack::{open_image, open_store};

/// Arguments of `thinnode verify`.
#[derive(clap::Args)]
pub struct Args {
    /// The image (manifest) file or flist, or an http(s):// URL of one.
    image: PathBuf,
    /// Require a valid signature by this public key (a `.pub` file from `thinnode key gen`).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Fetch every chunk and check it; report each missing or corrupt one by file and offset.
    #[arg(long)]
    deep: bool,
    /// Fetch chunks from this store instead of the one recorded in the image.
    #[arg(long, env = "THINNODE_STORE")]
    store: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `thinnode verify`; exits non-zero when anything is wrong.
pub fn run(args: Args) -> anyhow::Result<()> {
    let m = open_image(&args.image, None)?;
    if args.trust.is_some() && m.source() == image::ManifestSource::Flist {
        anyhow::bail!(
            "{} is an flist, which carries no signature: --trust cannot be satisfied",
            args.image.display()
        );
    }
    let trusted = match &args.trust {
        Some(t) => {
            Some(image::read_verifying_key(t).with_context(|| format!("reading {}", t.display()))?)
        }
        None => None,
    };
    let store = if args.deep {
        Some(open_store(args.store.as_deref(), &m)?)
    } else {
        None
    };
    let opts = image::VerifyOptions {
        trusted,
        deep: args.deep,
        ..Default::default()
    };
    let report = image::verify(&m, store.as_deref(), &opts)
        .with_context(|| format!("verifying {}", args.image.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match (&report.signer, report.signature_trusted) {
            (Some(k), true) => println!("signature: valid, by trusted key {k}"),
            (Some(k), false) => println!("signature: present, by {k} (not checked: pass --trust)"),
            (None, _) => println!("signature: none (unsigned image)"),
        }
        println!(
            "manifest:  {}",
            if report.body_hash_ok {
                "hash ok"
            } else {
                "HASH MISMATCH"
            }
        );
        match &report.structure_error {
            None => println!("structure: ok"),
            Some(e) => println!("structure: BROKEN: {e}"),
        }
        if report.deep {
            println!(
                "chunks:    {} checked, {} bad",
                report.chunks_checked, report.bad_chunks
            );
            for p in &report.problems {
                println!(
                    "{} @ {}: {} (chunk {})",
                    p.path, p.offset, p.reason, p.chunk
                );
            }
        }
    }
    if !report.is_ok() {
        anyhow::bail!("{} failed verification", args.image.display());
    }
    Ok(())
}
