//! Rewriting the store URLs an image records (for `thinnode store copy`): every section is kept byte for
//! byte except the meta section, whose store list is replaced; the body hash is recomputed and the image is
//! signed again with the given key, or left unsigned (the old signature cannot cover the new body).

use ed25519_dalek::{Signer, SigningKey};

use crate::format::{
    Section, HEADER_LEN, SECTION_COUNT, SIGNATURE_CONTEXT, TRAILER_LEN, TRAILER_MAGIC,
    TRAILER_SIGNED,
};
use crate::{ImageError, ImageManifest};

fn corrupt(reason: &str) -> ImageError {
    ImageError::CorruptManifest(reason.to_string())
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The manifest `manifest` (the bytes of an image file) with its recorded store URLs replaced by `stores`
/// and its labels kept, signed by `signer` or unsigned.
pub fn manifest_with_stores(
    manifest: &[u8],
    stores: &[String],
    signer: Option<&SigningKey>,
) -> Result<Vec<u8>, ImageError> {
    let parsed = ImageManifest::from_bytes(manifest.to_vec())?;
    let body_len = manifest
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or_else(|| corrupt("shorter than a trailer"))?;
    let header = manifest
        .get(..HEADER_LEN)
        .ok_or_else(|| corrupt("short header"))?;

    let mut meta = Vec::new();
    let put_str = |meta: &mut Vec<u8>, s: &str| {
        meta.extend_from_slice(&(s.len() as u32).to_le_bytes());
        meta.extend_from_slice(s.as_bytes());
    };
    meta.extend_from_slice(&(stores.len() as u32).to_le_bytes());
    for s in stores {
        put_str(&mut meta, s);
    }
    let labels = parsed.labels();
    meta.extend_from_slice(&(labels.len() as u32).to_le_bytes());
    for (k, v) in &labels {
        put_str(&mut meta, k);
        put_str(&mut meta, v);
    }

    let mut sections: Vec<&[u8]> = Vec::with_capacity(SECTION_COUNT);
    for i in 0..SECTION_COUNT {
        if i == Section::Meta as usize {
            sections.push(&meta);
            continue;
        }
        let entry = 32 + i * 16;
        let (off, len) = (
            u64_at(header, entry).ok_or_else(|| corrupt("short section table"))?,
            u64_at(header, entry + 8).ok_or_else(|| corrupt("short section table"))?,
        );
        let (off, len) = (
            usize::try_from(off).map_err(|_| corrupt("section offset"))?,
            usize::try_from(len).map_err(|_| corrupt("section length"))?,
        );
        let section = if len == 0 {
            &[][..]
        } else {
            manifest
                .get(
                    off..off
                        .checked_add(len)
                        .ok_or_else(|| corrupt("section bounds"))?,
                )
                .filter(|_| off + len <= body_len)
                .ok_or_else(|| corrupt("section outside the body"))?
        };
        sections.push(section);
    }

    let mut out = Vec::with_capacity(manifest.len() + meta.len());
    out.extend_from_slice(header.get(..32).ok_or_else(|| corrupt("short header"))?);
    let mut at = HEADER_LEN as u64;
    for s in &sections {
        let len = s.len() as u64;
        let off = if len == 0 { 0 } else { at };
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        at += len;
    }
    out.extend_from_slice(header.get(out.len()..).unwrap_or_default());
    for s in &sections {
        out.extend_from_slice(s);
    }
    let body_hash = blake3::hash(&out);
    out.extend_from_slice(&TRAILER_MAGIC);
    let mut signature_part = [0u8; 96];
    let flags = match signer {
        Some(key) => {
            let mut message = SIGNATURE_CONTEXT.to_vec();
            message.extend_from_slice(body_hash.as_bytes());
            signature_part[..32].copy_from_slice(key.verifying_key().as_bytes());
            signature_part[32..].copy_from_slice(&key.sign(&message).to_bytes());
            TRAILER_SIGNED
        }
        None => 0,
    };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(body_hash.as_bytes());
    out.extend_from_slice(&signature_part);
    // The result must read back as a valid image with the new stores.
    let check = ImageManifest::from_bytes(out.clone())?;
    if check.stores() != stores {
        return Err(corrupt("rewritten store list does not read back"));
    }
    Ok(out)
}
