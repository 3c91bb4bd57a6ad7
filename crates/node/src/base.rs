//! `base create`: a stopped node's data directory packed into a labelled image, after checking that no
//! node process holds it and that it holds no node secrets (all checks run before anything is uploaded).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use walkdir::WalkDir;

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
        ..Default::default()
    };
    let excluded: Vec<PathBuf> = secrets.iter().map(|s| s.relative.clone()).collect();
    let summary = if excluded.is_empty() {
        image::pack(&data_dir, store.as_ref(), &opts.out, &pack_opts, progress)?
    } else {
        let farm = LinkFarm::build(&data_dir, &excluded)?;
        image::pack(farm.root(), store.as_ref(), &opts.out, &pack_opts, progress)?
    };
    Ok(BaseSummary {
        pack: summary,
        db_type,
        stripped: secrets,
        labels,
    })
}

/// A view of a directory without some paths, made of hard links next to it (same filesystem, no data
/// copied, the source untouched); removed when dropped.
pub struct LinkFarm {
    root: PathBuf,
}

impl LinkFarm {
    /// Builds the view of `source` without `excluded` (paths relative to `source`).
    pub fn build(source: &Path, excluded: &[PathBuf]) -> Result<LinkFarm> {
        let parent = source.parent().unwrap_or(Path::new("/"));
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = parent.join(format!(".thinnode-strip-{}-{name}", std::process::id()));
        if fs::symlink_metadata(&root).is_ok() {
            fs::remove_dir_all(&root).map_err(io_err("remove", &root))?;
        }
        let farm = LinkFarm { root };
        let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
        let mut walker = WalkDir::new(source).follow_links(false).into_iter();
        while let Some(entry) = walker.next() {
            let entry = entry.map_err(|e| NodeError::Io {
                action: "walk",
                path: source.to_path_buf(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
            })?;
            let Ok(rel) = entry.path().strip_prefix(source) else {
                continue;
            };
            if !rel.as_os_str().is_empty() && excluded.iter().any(|x| rel.starts_with(x)) {
                if entry.file_type().is_dir() {
                    walker.skip_current_dir();
                }
                continue;
            }
            let dest = farm.root.join(rel);
            let meta = entry.metadata().map_err(|e| NodeError::Io {
                action: "stat",
                path: entry.path().to_path_buf(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("stat failed")),
            })?;
            if entry.file_type().is_dir() {
                fs::create_dir(&dest).map_err(io_err("create directory", &dest))?;
                fs::set_permissions(&dest, meta.permissions()).map_err(io_err("chmod", &dest))?;
                std::os::unix::fs::lchown(&dest, Some(meta.uid()), Some(meta.gid()))
                    .map_err(io_err("chown", &dest))?;
                dirs.push((dest, meta));
            } else {
                fs::hard_link(entry.path(), &dest).map_err(io_err(
                    "hard-link (the strip view must be on the data directory's filesystem)",
                    entry.path(),
                ))?;
            }
        }
        // Directory times last, deepest first, so adding entries does not change them again.
        for (dir, meta) in dirs.iter().rev() {
            let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
            let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
            utimensat(
                nix::fcntl::AT_FDCWD,
                dir.as_path(),
                &atime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| NodeError::Io {
                action: "set times of",
                path: dir.clone(),
                source: std::io::Error::from(e),
            })?;
        }
        Ok(farm)
    }

    /// The view's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for LinkFarm {
    fn drop(&mut self) {
        // Only our own directories and links are removed; the linked files keep their source names.
        if let Err(e) = fs::remove_dir_all(&self.root) {
            tracing::warn!("remove {}: {e}", self.root.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_farm_leaves_out_excluded_paths_and_keeps_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("data");
        fs::create_dir_all(src.join("chains/x/network")).expect("mkdir");
        fs::create_dir_all(src.join("chains/x/db")).expect("mkdir");
        fs::write(src.join("chains/x/network/secret_ed25519"), [1u8; 32]).expect("write");
        fs::write(src.join("chains/x/db/table"), b"rows").expect("write");
        std::os::unix::fs::symlink("db/table", src.join("chains/x/link")).expect("symlink");
        let view_root;
        {
            let farm = LinkFarm::build(&src, &[PathBuf::from("chains/x/network/secret_ed25519")])
                .expect("farm");
            view_root = farm.root().to_path_buf();
            assert!(!farm.root().join("chains/x/network/secret_ed25519").exists());
            assert!(farm.root().join("chains/x/network").is_dir());
            assert_eq!(
                fs::read(farm.root().join("chains/x/db/table")).expect("read"),
                b"rows"
            );
            assert_eq!(
                fs::read_link(farm.root().join("chains/x/link")).expect("readlink"),
                PathBuf::from("db/table")
            );
        }
        assert!(!view_root.exists(), "the view is removed");
        assert!(
            src.join("chains/x/network/secret_ed25519").exists(),
            "the source keeps its secret"
        );
        assert_eq!(
            fs::read(src.join("chains/x/db/table")).expect("read"),
            b"rows"
        );
    }
}
