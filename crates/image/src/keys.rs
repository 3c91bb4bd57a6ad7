//! Signing keys: generation and the text key-file format written by `thinnode key gen`.
//!
//! Secret key file: the line `thinnode-ed25519-secret-key-v1` then a line with the 32-byte seed in hex.
//! Public key file: the line `thinnode-ed25519-public-key-v1` then a line with the 32-byte key in hex.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;

use crate::ImageError;

const SECRET_HEADER: &str = "thinnode-ed25519-secret-key-v1";
const PUBLIC_HEADER: &str = "thinnode-ed25519-public-key-v1";

/// A fresh random signing key (from the operating system's RNG).
pub fn generate_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

fn bad(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::BadKey {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_key_file(path: &Path, header: &str) -> Result<[u8; 32], ImageError> {
    let text = fs::read_to_string(path)
        .map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(header) {
        return Err(bad(path, format!("first line must be {header}")));
    }
    let hex_line = lines.next().ok_or_else(|| bad(path, "missing key line"))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_line, &mut out)
        .map_err(|_| bad(path, "key line is not 64 hex digits"))?;
    Ok(out)
}

/// Reads a secret key file written by [`write_signing_key`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, ImageError> {
    Ok(SigningKey::from_bytes(&read_key_file(path, SECRET_HEADER)?))
}

/// Reads a public key file (the `.pub` written by `thinnode key gen`), for `--trust`.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, ImageError> {
    let bytes = read_key_file(path, PUBLIC_HEADER)?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| bad(path, format!("not an ed25519 public key: {e}")))
}

/// Writes a secret key file with mode 0600; refuses to overwrite an existing file.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), ImageError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ImageError::io(format!("create {}", path.display()), e))?;
    writeln!(f, "{SECRET_HEADER}\n{}", hex::encode(key.to_bytes()))
        .and_then(|_| f.sync_all())
        .map_err(|e| ImageError::io(format!("write {}", path.display()), e))
}

/// Writes a public key file (mode 0644); refuses to overwrite an existing file.
pub fn write_verifying_key(path: &Path, key: &VerifyingKey) -> Result<(), ImageError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| ImageError::io(format!("create {}", path.display()), e))?;
    writeln!(f, "{PUBLIC_HEADER}\n{}", hex::encode(key.as_bytes()))
        .and_then(|_| f.sync_all())
        .map_err(|e| ImageError::io(format!("write {}", path.display()), e))
}

/// Generates a key pair and writes `path` (secret, 0600) and `path.pub` (public). Returns the public key.
pub fn write_key_pair(path: &Path) -> Result<VerifyingKey, ImageError> {
    let key = generate_signing_key();
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = std::path::PathBuf::from(pub_path);
    if pub_path.exists() {
        return Err(ImageError::Invalid(format!(
            "{} already exists",
            pub_path.display()
        )));
    }
    write_signing_key(path, &key)?;
    write_verifying_key(&pub_path, &key.verifying_key())?;
    Ok(key.verifying_key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_pair_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let public = write_key_pair(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = read_signing_key(&path).unwrap();
        assert_eq!(secret.verifying_key(), public);
        let read_pub = read_verifying_key(&dir.path().join("signing.key.pub")).unwrap();
        assert_eq!(read_pub, public);
        // No overwrite.
        assert!(write_key_pair(&path).is_err());
        // A secret key file is not a public key file.
        assert!(matches!(
            read_verifying_key(&path),
            Err(ImageError::BadKey { .. })
        ));
        fs::write(
            dir.path().join("junk"),
            "thinnode-ed25519-public-key-v1\nzz\n",
        )
        .unwrap();
        assert!(read_verifying_key(&dir.path().join("junk")).is_err());
    }
}
