//! Per-node network identity, never inherited from the base.
//!
//! Substrate reads its libp2p key from `BASE/chains/<chain>/network/secret_ed25519` (32 raw bytes, or 64
//! hex characters); a node gets its own key written there for every chain directory of the base.
//! Bitcoin and litecoin keep no persistent network key, but remember peers (`peers.dat`, `anchors.dat`)
//! and bans (`banlist.*`): those are removed from the node's view so nodes do not share them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::error::{io_err, NodeError, Result};
use crate::scan::PEER_STATE_FILES;

/// The file name of a Substrate network key.
pub const SUBSTRATE_KEY_FILE: &str = "secret_ed25519";

/// An ed25519 secret key (the 32-byte seed).
#[derive(Clone, PartialEq, Eq)]
pub struct NetworkKey([u8; 32]);

impl std::fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret; the public key identifies it.
        write!(f, "NetworkKey(public {})", self.public_hex())
    }
}

impl NetworkKey {
    /// A fresh random key.
    pub fn generate() -> NetworkKey {
        NetworkKey(image::generate_signing_key().to_bytes())
    }

    /// Reads a key file in Substrate's format: 32 raw bytes, or 64 hex characters (surrounding
    /// whitespace ignored).
    pub fn read(path: &Path) -> Result<NetworkKey> {
        let bytes = fs::read(path).map_err(io_err("read", path))?;
        if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(NetworkKey(raw));
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut out = [0u8; 32];
        hex_decode(text.trim(), &mut out).map_err(|_| {
            NodeError::BadArgument(format!(
                "{}: not an ed25519 secret key (want 32 raw bytes or 64 hex characters)",
                path.display()
            ))
        })?;
        Ok(NetworkKey(out))
    }

    /// Writes the key as 32 raw bytes, mode 0600, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let tmp = path.with_extension("tmp");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(&self.0).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename", &tmp))?;
        Ok(())
    }

    /// The public key, hex (what peers see as the node's identity).
    pub fn public_hex(&self) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&self.0);
        key.verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn hex_decode(s: &str, out: &mut [u8; 32]) -> std::result::Result<(), ()> {
    if s.len() != 64 || !s.is_ascii() {
        return Err(());
    }
    for (i, slot) in out.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2).ok_or(())?;
        *slot = u8::from_str_radix(pair, 16).map_err(|_| ())?;
    }
    Ok(())
}

/// Substrate chain directories under `root`: directories whose parent is named `chains` (for example
/// `chains/polkadot`, `polkadot/chains/ksmcc3`), at most four levels down.
pub fn substrate_chain_dirs(root: &Path) -> Vec<PathBuf> {
    WalkDir::new(root)
        .follow_links(false)
        .min_depth(2)
        .max_depth(4)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.file_type().is_dir())
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.path()
                .parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == "chains")
        })
        .map(|e| e.into_path())
        .collect()
}

/// Peer state files (see [`PEER_STATE_FILES`]) under `root`, at most three levels down.
pub fn peer_state_files(root: &Path) -> Vec<PathBuf> {
    WalkDir::new(root)
        .follow_links(false)
        .max_depth(3)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_type().is_dir() || e.file_type().is_file())
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_type().is_file()
                && PEER_STATE_FILES
                    .iter()
                    .any(|n| e.file_name() == std::ffi::OsStr::new(n))
        })
        .map(|e| e.into_path())
        .collect()
}

/// What applying an identity changed in a node's view.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IdentityReport {
    /// Substrate network key files written.
    pub keys_written: Vec<PathBuf>,
    /// Peer state files removed.
    pub peer_files_removed: Vec<PathBuf>,
}

/// Gives the node whose merged data directory is `data` its own identity: `key` written into every
/// Substrate chain directory, peer state files removed.
pub fn apply(data: &Path, key: &NetworkKey) -> Result<IdentityReport> {
    let mut report = IdentityReport::default();
    for chain in substrate_chain_dirs(data) {
        let path = chain.join("network").join(SUBSTRATE_KEY_FILE);
        key.write(&path)?;
        report.keys_written.push(path);
    }
    for file in peer_state_files(data) {
        fs::remove_file(&file).map_err(io_err("remove", &file))?;
        report.peer_files_removed.push(file);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_both_formats_and_differ() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = NetworkKey::generate();
        let b = NetworkKey::generate();
        assert_ne!(a, b);
        let raw = dir.path().join("raw");
        a.write(&raw).expect("write");
        assert_eq!(NetworkKey::read(&raw).expect("read"), a);
        let hex_path = dir.path().join("hex");
        let hex: String = a.0.iter().map(|x| format!("{x:02x}")).collect();
        fs::write(&hex_path, format!("{hex}\n")).expect("write");
        assert_eq!(NetworkKey::read(&hex_path).expect("read"), a);
        fs::write(&hex_path, b"short").expect("write");
        assert!(NetworkKey::read(&hex_path).is_err());
        assert!(
            !format!("{a:?}").contains(&hex),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn apply_writes_keys_per_chain_and_removes_peer_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("chains/polkadot/db")).expect("mkdir");
        fs::create_dir_all(root.join("chains/kusama")).expect("mkdir");
        fs::create_dir_all(root.join("regtest")).expect("mkdir");
        fs::write(root.join("regtest/peers.dat"), b"peers").expect("write");
        fs::write(root.join("regtest/anchors.dat"), b"anchors").expect("write");
        let key = NetworkKey::generate();
        let report = apply(root, &key).expect("apply");
        assert_eq!(report.keys_written.len(), 2);
        assert_eq!(report.peer_files_removed.len(), 2);
        let written =
            NetworkKey::read(&root.join("chains/polkadot/network/secret_ed25519")).expect("read");
        assert_eq!(written, key);
        assert!(!root.join("regtest/peers.dat").exists());
    }
}
