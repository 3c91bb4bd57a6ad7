//! `thinnode base create`: pack a stopped node's data directory into a labelled base image, refusing
//! node secrets and directories a running node holds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Arguments of `thinnode base`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BaseCommand,
}

#[derive(clap::Subcommand)]
enum BaseCommand {
    /// Pack a STOPPED node's data directory into a base image (checks for secrets and locks first).
    Create(CreateArgs),
}

/// Arguments of `thinnode base create`.
#[derive(clap::Args)]
struct CreateArgs {
    /// The stopped node's data directory.
    data_dir: PathBuf,
    /// Where chunks go: dir://PATH or zdb://[user:pass@]host[:port][/namespace].
    #[arg(long, env = "THINNODE_STORE")]
    store: String,
    /// The image file to write.
    #[arg(long)]
    out: PathBuf,
    /// Chain name (label `chain`).
    #[arg(long)]
    chain: String,
    /// Block height of the data (label `height`).
    #[arg(long)]
    height: Option<u64>,
    /// Block hash at that height (label `block_hash`).
    #[arg(long)]
    block_hash: Option<String>,
    /// Database kind (label `db_type`); detected when not given (paritydb, rocksdb, leveldb).
    #[arg(long)]
    db_type: Option<String>,
    /// Sign the manifest with this secret key (from `thinnode key gen`).
    #[arg(long)]
    sign: Option<PathBuf>,
    /// A further path (relative to DATA_DIR) that holds a secret (repeatable).
    #[arg(long = "secret-path")]
    secret_paths: Vec<PathBuf>,
    /// Leave secrets out of the image instead of refusing (the source keeps them).
    #[arg(long)]
    strip_secrets: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

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

/// A pack progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar() -> impl image::PackProgress {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Progress { bar }
}

/// Runs `thinnode base`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        BaseCommand::Create(a) => create(a),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let signer = super::key::read_signer(args.sign.as_deref())?;
    let opts = node::BaseOptions {
        data_dir: args.data_dir.clone(),
        store_url: args.store.clone(),
        out: args.out.clone(),
        chain: args.chain.clone(),
        height: args.height,
        block_hash: args.block_hash.clone(),
        db_type: args.db_type.clone(),
        labels: Vec::new(),
        signer,
        secret_paths: args.secret_paths.clone(),
        strip_secrets: args.strip_secrets,
    };
    let progress = progress_bar();
    let summary = node::create_base(&opts, Some(&progress))
        .with_context(|| format!("base create {}", args.data_dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("image:     {}", args.out.display());
    let labels: Vec<String> = summary
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("labels:    {}", labels.join(" "));
    for s in &summary.stripped {
        println!("stripped:  {} ({:?})", s.relative.display(), s.kind);
    }
    let p = &summary.pack;
    println!(
        "files:     {} regular, {} directories; {:.1} MiB logical",
        p.files,
        p.directories,
        mib(p.logical_bytes)
    );
    println!(
        "uploaded:  {:.1} MiB of {:.1} MiB stored ({} new chunks of {})",
        mib(p.bytes_uploaded),
        mib(p.bytes_stored),
        p.chunks_new,
        p.chunks_unique
    );
    Ok(())
}
