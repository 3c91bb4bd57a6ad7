//! The flist side of `thinnode pack` (`--format fl`): options shared with `thinnode convert` and the
//! report of what was written.

/// What `pack` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A thinnode image (manifest).
    Image,
    /// A ThreeFold flist (.fl) that rfs and Zero-OS mount: 512 KiB rfs blocks, the store as its routes.
    Fl,
}

/// Flist options of `pack`.
#[derive(clap::Args)]
pub struct FlistArgs {
    /// Output format: `image` (thinnode) or `fl` (a ThreeFold flist that rfs mounts; blocks are 512 KiB
    /// rfs blocks, so --chunk-size and --level do not apply; it cannot be signed).
    #[arg(long, value_enum, default_value = "image")]
    pub format: Format,
    /// With --format fl: keep the store password in the flist's routes (rfs, and this, strip it by
    /// default; readers then pass the password with --store).
    #[arg(long)]
    pub keep_password: bool,
    /// With --format fl: write the flist without the extended attributes the tree has (refused
    /// otherwise: an flist cannot hold them).
    #[arg(long)]
    pub drop_xattrs: bool,
}

/// Prints what writing an flist did (warnings on stderr).
pub fn report_flist(out: &std::path::Path, w: &image::FlistWriteSummary) {
    for warning in &w.warnings {
        eprintln!("warning: {warning}");
    }
    println!("flist:     {} ({} bytes)", out.display(), w.flist_bytes);
    println!(
        "rows:      {} inodes, {} blocks ({} zero blocks for holes)",
        w.inodes, w.blocks, w.zero_blocks
    );
}

/// `thinnode pack --format fl`.
pub fn pack(
    args: &super::pack::Args,
    store: &dyn store::ChunkStore,
    opts: &image::PackOptions,
    progress: &dyn image::PackProgress,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let fl = image::FlistOptions {
        store_url: args.store.clone(),
        keep_passwords: args.flist.keep_password,
        drop_xattrs: args.flist.drop_xattrs,
    };
    let (s, w) = image::fl::pack_flist(&args.dir, store, &args.out, opts, &fl, Some(progress))
        .with_context(|| format!("packing {} into an flist", args.dir.display()))?;
    if args.json {
        let value = serde_json::json!({ "pack": s, "flist": w });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    report_flist(&args.out, &w);
    println!("store:     {}", store.public_url());
    println!(
        "files:     {} regular, {} directories, {} symlinks, {} special",
        s.files, s.directories, s.symlinks, s.special_files
    );
    println!(
        "blocks:    {} total, {} unique, {} new; {:.1} MiB uploaded of {:.1} MiB stored",
        s.chunks_total,
        s.chunks_unique,
        s.chunks_new,
        mib(s.bytes_uploaded),
        mib(s.bytes_stored)
    );
    println!("elapsed:   {:.2} s", s.elapsed_secs);
    Ok(())
}
