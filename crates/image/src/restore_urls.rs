//! Rewriting the store URLs an image records (for `thinnode store copy`): every section is kept byte for
//! byte except the meta section, whose store list is replaced; the body hash is recomputed and the image is
//! signed again with the given key, or left unsigned (the old signature cannot cover the new body).

use ed25519_dalek::SigningKey;
use zerocopy::FromBytes;

use crate::format::{
    encode_meta, seal_body, Header, HeaderFields, Section, SECTION_COUNT, TRAILER_LEN,
};
use crate::{ImageError, ImageManifest};

fn corrupt(reason: &str) -> ImageError {
    ImageError::CorruptManifest(reason.to_string())
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
    let header = Header::ref_from_prefix(manifest)
        .map_err(|_| corrupt("short header"))?
        .0;
    let meta = encode_meta(stores, &parsed.labels());
    let mut sections: [&[u8]; SECTION_COUNT] = [&[]; SECTION_COUNT];
    for ((slot, entry), section) in sections.iter_mut().zip(&header.sections).zip(Section::ALL) {
        if section == Section::Meta {
            *slot = &meta;
            continue;
        }
        let off = usize::try_from(entry.offset.get()).map_err(|_| corrupt("section offset"))?;
        let len = usize::try_from(entry.len.get()).map_err(|_| corrupt("section length"))?;
        if len == 0 {
            continue;
        }
        *slot = off
            .checked_add(len)
            .filter(|end| *end <= body_len)
            .and_then(|end| manifest.get(off..end))
            .ok_or_else(|| corrupt("section outside the body"))?;
    }
    let fields = HeaderFields {
        chunk_size: header.chunk_size.get(),
        flags: header.flags.get(),
        inode_count: header.inode_count.get(),
    };
    let out = seal_body(fields, &sections, signer);
    // The result must read back as a valid image with the new stores.
    let check = ImageManifest::from_bytes(out.clone())?;
    if check.stores() != stores {
        return Err(corrupt("rewritten store list does not read back"));
    }
    Ok(out)
}
