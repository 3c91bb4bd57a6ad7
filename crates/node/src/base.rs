//! `base create`: a stopped node's data directory packed into a labelled image, after checking that no
//! node process holds it and that it holds no node secrets (all checks run before anything is uploaded).

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::error::{io_err, NodeError, Result};
use crate::scan::{self, Secret};

/// What `base create` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct BaseOptions {
    /// The stopped node's data directory.
    pub data_dir: PathBuf,
    /// Where chunks go (store URL).
    pub store_url: String,
    /// The image file to write.
    pub out: PathBuf,
    /// Chain name label.
    pub chain: String,
    /// Block height label.
    pub height: Option<u64>,
    /// Block hash label.
    pub block_hash: Option<String>,
    /// Database kind label; detected when `None`.
    pub db_type: Option<String>,
    /// Further labels.
    pub labels: Vec<(String, String)>,
    /// Key to sign the manifest with.
    pub signer: Option<SigningKey>,
    /// Extra paths (relative to the data directory) that are secrets.
    pub secret_paths: Vec<PathBuf>,
    /// Leave secrets out of the image instead of refusing.
    pub strip_secrets: bool,
}

/// What `base create` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BaseSummary {
    /// The pack summary.
    pub pack: image::PackSummary,
    /// The database kind label recorded (empty when none was found).
    pub db_type: String,
    /// Secrets left out of the image (with `strip_secrets`).
    pub stripped: Vec<Secret>,
    /// Every label recorded.
    pub labels: Vec<(String, String)>,
}

/// Refuses `dir` when a running process holds one of its lock files.
pub fn check_not_in_use(dir: &Path) -> Result<()> {
    let locks = scan::held_locks(dir)?;
    if locks.is_empty() {
        Ok(())
    } else {
        Err(NodeError::InUse {
            root: dir.to_path_buf(),
            locks,
        })
    }
}

/// The secrets of `dir`, as an error naming every one of them, unless there are none.
pub fn refuse_secrets(dir: &Path, secrets: &[Secret]) -> Result<()> {
    if secrets.is_empty() {
        return Ok(());
    }
    Err(NodeError::SecretsFound {
        root: dir.to_path_buf(),
        paths: secrets.iter().map(|s| dir.join(&s.relative)).collect(),
    })
}

/// Checks, then packs a stopped node's data directory into a labelled image.
pub fn create(
    opts: &BaseOptions,
    progress: Option<&dyn image::PackProgress>,
) -> Result<BaseSummary> {
    let data_dir = fs::canonicalize(&opts.data_dir).map_err(io_err("resolve", &opts.data_dir))?;
    if !fs::metadata(&data_dir)
        .map_err(io_err("stat", &data_dir))?
        .is_dir()
    {
        return Err(NodeError::BadArgument(format!(
            "{} is not a directory",
            data_dir.display()
        )));
    }
    check_not_in_use(&data_dir)?;
    let secrets = scan::find_secrets(&data_dir, &opts.secret_paths)?;
    if !opts.strip_secrets {
        refuse_secrets(&data_dir, &secrets)?;
    }
    let db_type = match &opts.db_type {
        Some(t) => t.clone(),
        None => scan::detect_db_kinds(&data_dir)?
            .into_iter()
            .collect::<Vec<_>>()
            .join("+"),
    };
    let mut labels = vec![("chain".to_string(), opts.chain.clone())];
    if let Some(h) = opts.height {
        labels.push(("height".into(), h.to_string()));
    }
    if let Some(h) = &opts.block_hash {
        labels.push(("block_hash".into(), h.clone()));
    }
    if !db_type.is_empty() {
        labels.push(("db_type".into(), db_type.clone()));
    }
    labels.extend(opts.labels.iter().cloned());
    let store = store::open(&opts.store_url)?;
    let pack_opts = image::PackOptions {
        signer: opts.signer.clone(),
        labels: labels.clone(),
        // With --strip-secrets: left out of the image, untouched in the source.
        exclude: secrets.iter().map(|s| s.relative.clone()).collect(),
        ..Default::default()
    };
    let summary = image::pack(&data_dir, store.as_ref(), &opts.out, &pack_opts, progress)?;
    Ok(BaseSummary {
        pack: summary,
        db_type,
        stripped: secrets,
        labels,
    })
}
