//! Images and flists given as `http(s)://` URLs (as the ThreeFold hub serves flists): downloaded into
//! `CACHE/images/`, named by the BLAKE3 hash of their content, so a node is pinned to exactly what was
//! downloaded; each URL remembers the copy it last got, which is used when the server cannot be reached.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// Largest image or flist downloaded (a hub flist of a whole OS is a few tens of MiB).
const MAX_DOWNLOAD: u64 = 4 << 30;

/// Whether an image argument is a URL to download.
pub fn is_url(arg: &Path) -> bool {
    let s = arg.to_string_lossy();
    s.starts_with("http://") || s.starts_with("https://")
}

/// The host cache directory of commands without a `--cache` flag: `THINNODE_CACHE`, else the default.
pub fn default_cache() -> PathBuf {
    std::env::var_os("THINNODE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(mount::DEFAULT_CACHE_DIR))
}

/// `arg` itself when it is a path; for a URL, the downloaded copy in `cache/images/` (see the module
/// doc). Without the server, the copy last downloaded from the same URL is used, with a warning.
pub fn local_image(arg: &Path, cache: &Path) -> anyhow::Result<PathBuf> {
    if !is_url(arg) {
        return Ok(arg.to_path_buf());
    }
    let url = arg.to_string_lossy().into_owned();
    let dir = cache.join("images");
    std::fs::create_dir_all(dir.join("urls"))
        .with_context(|| format!("create {}", dir.display()))?;
    let pointer = dir
        .join("urls")
        .join(blake3::hash(url.as_bytes()).to_hex().as_str());
    match download(&url, &dir) {
        Ok(path) => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            write_small(&pointer, name.as_bytes())?;
            Ok(path)
        }
        Err(e) => {
            let cached = std::fs::read_to_string(&pointer)
                .ok()
                .map(|name| dir.join(name.trim()))
                .filter(|p| p.is_file());
            match cached {
                Some(p) => {
                    tracing::warn!(
                        "cannot download {url} ({e:#}); using the copy downloaded before: {}",
                        p.display()
                    );
                    eprintln!(
                        "warning: cannot download {url} ({e:#}); using the copy downloaded before ({})",
                        p.display()
                    );
                    Ok(p)
                }
                None => Err(e.context(format!("download {url} (and no copy downloaded before)"))),
            }
        }
    }
}

fn write_small(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Downloads `url` into `dir/<blake3 of the content>.<extension of the URL>`; returns that path.
fn download(url: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut response = agent.get(url).call().context("request")?;
    let status = response.status().as_u16();
    if status != 200 {
        anyhow::bail!("the server answered HTTP {status}");
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut hasher = blake3::Hasher::new();
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(MAX_DOWNLOAD)
        .reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).context("read the body")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut tmp, &buf[..n])?;
    }
    tmp.as_file().sync_all()?;
    let extension = url
        .rsplit('/')
        .next()
        .and_then(|name| name.split(['?', '#']).next())
        .and_then(|name| name.rsplit_once('.').map(|(_, e)| e.to_string()))
        .filter(|e| !e.is_empty() && e.len() <= 8 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "img".into());
    let path = dir.join(format!("{}.{extension}", hasher.finalize().to_hex()));
    if !path.exists() {
        tmp.persist(&path)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(path)
}
