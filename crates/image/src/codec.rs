//! Chunk encoding: plaintext → zstd (kept only when it shrinks) → AES-256-GCM under a convergent key →
//! stored object, whose BLAKE3 hash is the [`ChunkId`]. Chunks may also be rfs blocks (ThreeFold flists,
//! [`ChunkEncoding::RfsBlock`]): [`decode_chunk`] and [`check_chunk_key`] handle both, using crate
//! `flist` for the rfs codec.

use std::cell::RefCell;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::{ChunkEncoding, ChunkId, ChunkRef, ImageError};

/// The BLAKE3 key-derivation context for convergent chunk keys.
pub const CHUNK_KEY_CONTEXT: &str = "thinnode chunk key v1";

/// Default zstd level used by pack.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Length of the AES-GCM authentication tag appended to every stored object.
pub const TAG_LEN: usize = 16;

/// The fixed all-zero nonce: safe because every key encrypts exactly one plaintext.
const NONCE: [u8; 12] = [0u8; 12];

/// AES-256-GCM under `key` (ring's implementation: about 6× the `aes-gcm` crate's throughput on this
/// machine, same bytes).
fn cipher(key: &[u8; 32]) -> Result<LessSafeKey, ImageError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| ImageError::Invalid("AES-256-GCM refused a 32-byte key".into()))
}

thread_local! {
    /// This thread's zstd compression context and the level it was made for: making a context per
    /// chunk cost a few percent of pack time (allocation and initialisation). Output is the same bytes
    /// as a fresh context's, so dedup is unaffected.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    /// This thread's zstd decompression context.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// zstd-compresses `data` at `level` with this thread's reused context.
fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, ImageError> {
    let failed = |e: std::io::Error| ImageError::Invalid(format!("zstd compression failed: {e}"));
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some((l, c)) if *l == level => c.compress(data).map_err(failed),
            _ => {
                let mut c = zstd::bulk::Compressor::new(level).map_err(failed)?;
                let out = c.compress(data).map_err(failed);
                *slot = Some((level, c));
                out
            }
        }
    })
}

/// zstd-decompresses `data` into `out` (its length is the limit) with this thread's reused context;
/// returns the decompressed length.
fn decompress_into(data: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some(d) => d.decompress_to_buffer(data, out),
            None => {
                let mut d = zstd::bulk::Decompressor::new()?;
                let n = d.decompress_to_buffer(data, out);
                *slot = Some(d);
                n
            }
        }
    })
}

/// The convergent key of a plaintext chunk.
pub fn chunk_key(plain: &[u8]) -> [u8; 32] {
    blake3::derive_key(CHUNK_KEY_CONTEXT, plain)
}

/// One encoded chunk: the reference the manifest keeps and the object the store keeps.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    /// What the manifest records about the chunk.
    pub chunk_ref: ChunkRef,
    /// The stored object (ciphertext plus tag).
    pub stored: Vec<u8>,
}

/// Encodes one plaintext chunk with zstd at `level` (skipped when it does not shrink the data) and
/// convergent AES-256-GCM encryption.
pub fn encode_chunk(plain: &[u8], level: i32) -> Result<EncodedChunk, ImageError> {
    let plain_len = u32::try_from(plain.len())
        .map_err(|_| ImageError::Invalid(format!("chunk of {} bytes is too large", plain.len())))?;
    let key = chunk_key(plain);
    let compressed = if looks_incompressible(plain, level)? {
        None
    } else {
        Some(compress(plain, level)?)
    };
    let (mut buf, is_compressed) = match compressed {
        Some(c) if c.len() < plain.len() => (c, true),
        _ => (plain.to_vec(), false),
    };
    buf.reserve_exact(TAG_LEN);
    cipher(&key)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(NONCE), Aad::empty(), &mut buf)
        .map_err(|_| ImageError::Invalid("AES-GCM encryption failed".into()))?;
    let stored_len = u32::try_from(buf.len())
        .map_err(|_| ImageError::Invalid("encoded chunk is too large".into()))?;
    Ok(EncodedChunk {
        chunk_ref: ChunkRef {
            id: ChunkId::of(&buf),
            key,
            plain_len,
            stored_len,
            compressed: is_compressed,
            encoding: ChunkEncoding::Thinnode,
        },
        stored: buf,
    })
}

/// Encodes one plaintext chunk with `encoding`: [`encode_chunk`] for thinnode's own, the rfs block codec
/// (what rfs would store for this block, byte for byte) for [`ChunkEncoding::RfsBlock`]. `level` is the
/// zstd level and only matters for thinnode's encoding.
pub fn encode_chunk_as(
    encoding: ChunkEncoding,
    plain: &[u8],
    level: i32,
) -> Result<EncodedChunk, ImageError> {
    match encoding {
        ChunkEncoding::Thinnode => encode_chunk(plain, level),
        ChunkEncoding::RfsBlock => {
            let too_large = || ImageError::Invalid(format!("block of {} bytes", plain.len()));
            let plain_len = u32::try_from(plain.len()).map_err(|_| too_large())?;
            let enc = flist::encode_block(plain)
                .map_err(|e| ImageError::Invalid(format!("rfs block encoding: {e}")))?;
            Ok(EncodedChunk {
                chunk_ref: ChunkRef {
                    id: ChunkId(enc.block.id),
                    key: enc.block.key,
                    plain_len,
                    stored_len: u32::try_from(enc.stored.len()).map_err(|_| too_large())?,
                    compressed: false,
                    encoding: ChunkEncoding::RfsBlock,
                },
                stored: enc.stored,
            })
        }
    }
}

/// Chunks at least this long are probed before being compressed.
const PROBE_MIN_LEN: usize = 128 * 1024;
/// Length of the probe taken from the start of a chunk.
const PROBE_LEN: usize = 32 * 1024;

/// Whether compressing `plain` is not worth it: for chunks of 128 KiB or more, the first 32 KiB are
/// compressed and the chunk is stored uncompressed when they shrink by less than 1/32 (random data,
/// already-compressed blocks). Deterministic in `plain`, so equal chunks still encode equally.
fn looks_incompressible(plain: &[u8], level: i32) -> Result<bool, ImageError> {
    if plain.len() < PROBE_MIN_LEN {
        return Ok(false);
    }
    let probe = plain.get(..PROBE_LEN).unwrap_or(plain);
    let c = compress(probe, level)?;
    Ok(c.len() > probe.len() - probe.len() / 32)
}

/// Alignment of the plaintext of a [`DecodedChunk`] in memory: the page size, what direct I/O needs.
pub const DECODED_ALIGN: usize = 4096;

/// The verified plaintext of one chunk, placed at a page-aligned address (so a cache can write it with
/// direct I/O without copying it first). Dereferences to the plaintext bytes.
#[derive(Clone, Debug, Default)]
pub struct DecodedChunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for DecodedChunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.buf
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }
}

impl PartialEq<[u8]> for DecodedChunk {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<Vec<u8>> for DecodedChunk {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == **other
    }
}

impl From<Vec<u8>> for DecodedChunk {
    /// Plaintext already in a vector (not necessarily aligned), e.g. read back from a cache.
    fn from(buf: Vec<u8>) -> Self {
        let len = buf.len();
        DecodedChunk { buf, start: 0, len }
    }
}

impl DecodedChunk {
    /// A buffer with room for `len` bytes starting at a page-aligned address; returns it and that
    /// start. Only the bytes before the start are written (zeros, less than a page).
    fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
        let mut buf: Vec<u8> = Vec::with_capacity(len + DECODED_ALIGN);
        let start = buf.as_ptr().align_offset(DECODED_ALIGN).min(DECODED_ALIGN);
        buf.resize(start, 0);
        (buf, start)
    }
}

/// Verifies and decodes one stored object: checks `ChunkId::of(stored) == r.id`, decrypts (AEAD tag),
/// decompresses and checks the plaintext length. Never returns wrong bytes: any mismatch is
/// [`ImageError::CorruptChunk`]. The id check alone pins the stored bytes to what pack produced, so the
/// plaintext is not hashed again here (that costs a BLAKE3 pass per read); [`check_chunk_key`] does that
/// extra check where it is wanted (`verify --deep`).
///
/// An rfs block ([`ChunkEncoding::RfsBlock`]) is checked as rfs defines it: `BLAKE2b-256(stored) == id`,
/// AES-GCM opens under the key with nonce `key[0..12]`, snappy yields exactly `plain_len` bytes, and
/// `BLAKE2b-256(plaintext) == key` (checked on every read: the flist is not signed, so the key is the only
/// record of what the plaintext must be). `stored_len` 0 (unknown) is not checked.
pub fn decode_chunk(r: &ChunkRef, stored: &[u8]) -> Result<DecodedChunk, ImageError> {
    if r.encoding == ChunkEncoding::RfsBlock {
        return decode_rfs_block(r, stored);
    }
    let corrupt = |reason: String| ImageError::CorruptChunk { id: r.id, reason };
    if stored.len() != r.stored_len as usize {
        return Err(corrupt(format!(
            "stored object is {} bytes, manifest says {}",
            stored.len(),
            r.stored_len
        )));
    }
    if ChunkId::of(stored) != r.id {
        return Err(corrupt("stored object does not hash to its id".into()));
    }
    // The one copy out of the caller's buffer goes straight to an aligned place and is decrypted there.
    let (mut buf, start) = DecodedChunk::aligned_buffer(stored.len());
    buf.extend_from_slice(stored);
    let opened_len = cipher(&r.key)?
        .open_in_place(
            Nonce::assume_unique_for_key(NONCE),
            Aad::empty(),
            buf.get_mut(start..).unwrap_or_default(),
        )
        .map_err(|_| corrupt("authentication tag does not match (wrong key or data)".into()))?
        .len();
    let plain = if r.compressed {
        let compressed = buf.get(start..start + opened_len).unwrap_or_default();
        let (mut out, out_start) = DecodedChunk::aligned_buffer(r.plain_len as usize);
        out.resize(out_start + r.plain_len as usize, 0);
        let n = decompress_into(compressed, out.get_mut(out_start..).unwrap_or_default())
            .map_err(|e| corrupt(format!("zstd decompression failed: {e}")))?;
        DecodedChunk {
            buf: out,
            start: out_start,
            len: n,
        }
    } else {
        DecodedChunk {
            buf,
            start,
            len: opened_len,
        }
    };
    if plain.len() != r.plain_len as usize {
        return Err(corrupt(format!(
            "plaintext is {} bytes, manifest says {}",
            plain.len(),
            r.plain_len
        )));
    }
    Ok(plain)
}

/// [`decode_chunk`] of an rfs block, into page-aligned memory like thinnode chunks.
fn decode_rfs_block(r: &ChunkRef, stored: &[u8]) -> Result<DecodedChunk, ImageError> {
    let corrupt = |e: flist::BlockError| ImageError::CorruptChunk {
        id: r.id,
        reason: e.to_string(),
    };
    if r.stored_len != 0 && stored.len() != r.stored_len as usize {
        return Err(ImageError::CorruptChunk {
            id: r.id,
            reason: format!(
                "stored object is {} bytes, manifest says {}",
                stored.len(),
                r.stored_len
            ),
        });
    }
    flist::check_id(&r.id.0, stored).map_err(corrupt)?;
    let (mut buf, start) = DecodedChunk::aligned_buffer(stored.len());
    buf.extend_from_slice(stored);
    let compressed_len = flist::decrypt_in_place(&r.key, buf.get_mut(start..).unwrap_or_default())
        .map_err(corrupt)?;
    let compressed = buf.get(start..start + compressed_len).unwrap_or_default();
    let len = r.plain_len as usize;
    let (mut out, out_start) = DecodedChunk::aligned_buffer(len);
    out.resize(out_start + len, 0);
    flist::decompress_into(compressed, out.get_mut(out_start..).unwrap_or_default())
        .map_err(corrupt)?;
    let plain = DecodedChunk {
        buf: out,
        start: out_start,
        len,
    };
    flist::check_key(&r.key, &plain).map_err(corrupt)?;
    Ok(plain)
}

/// Checks that a decoded plaintext derives the key the manifest records for it (a packer bug or a
/// forged manifest entry would show here). For an rfs block the key is `BLAKE2b-256(plaintext)`.
pub fn check_chunk_key(r: &ChunkRef, plain: &[u8]) -> Result<(), ImageError> {
    if r.encoding == ChunkEncoding::RfsBlock {
        return flist::check_key(&r.key, plain).map_err(|e| ImageError::CorruptChunk {
            id: r.id,
            reason: e.to_string(),
        });
    }
    if chunk_key(plain) != r.key {
        return Err(ImageError::CorruptChunk {
            id: r.id,
            reason: "plaintext does not derive the recorded key".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_random() {
        let text = b"polkadot block ".repeat(5000);
        let enc = encode_chunk(&text, 3).unwrap();
        assert!(enc.chunk_ref.compressed);
        assert!(enc.stored.len() < text.len());
        assert_eq!(decode_chunk(&enc.chunk_ref, &enc.stored).unwrap(), text);

        let mut random = vec![0u8; 100_000];
        rand::Rng::fill(&mut rand::rng(), &mut random[..]);
        let enc = encode_chunk(&random, 3).unwrap();
        assert!(!enc.chunk_ref.compressed);
        assert_eq!(enc.stored.len(), random.len() + TAG_LEN);
        assert_eq!(decode_chunk(&enc.chunk_ref, &enc.stored).unwrap(), random);
    }

    #[test]
    fn decoded_plaintext_is_page_aligned_whatever_its_encoding() {
        let text = b"rocksdb sst block ".repeat(20_000);
        let mut random = vec![0u8; 1 << 20];
        rand::Rng::fill(&mut rand::rng(), &mut random[..]);
        for plain in [&text[..], &random[..], &random[..4097]] {
            let enc = encode_chunk(plain, 1).unwrap();
            let decoded = decode_chunk(&enc.chunk_ref, &enc.stored).unwrap();
            assert_eq!(&*decoded, plain);
            assert_eq!(decoded.as_ptr().align_offset(DECODED_ALIGN), 0);
            assert_eq!(decoded.to_vec(), plain);
        }
    }

    #[test]
    fn probe_skips_random_but_not_compressible_chunks() {
        let mut random = vec![0u8; 1 << 20];
        rand::Rng::fill(&mut rand::rng(), &mut random[..]);
        assert!(looks_incompressible(&random, 1).unwrap());
        let text = b"state trie node ".repeat(65536);
        assert!(!looks_incompressible(&text, 1).unwrap());
        // Random head, compressible tail: stored uncompressed, still round-trips.
        let mut mixed = random[..PROBE_LEN].to_vec();
        mixed.extend_from_slice(&text[..(1 << 20) - PROBE_LEN]);
        let enc = encode_chunk(&mixed, 1).unwrap();
        assert!(!enc.chunk_ref.compressed);
        assert_eq!(decode_chunk(&enc.chunk_ref, &enc.stored).unwrap(), mixed);
    }

    #[test]
    fn check_chunk_key_catches_a_key_that_the_plaintext_does_not_derive() {
        let enc = encode_chunk(b"header of block 7", 1).unwrap();
        let plain = decode_chunk(&enc.chunk_ref, &enc.stored).unwrap();
        check_chunk_key(&enc.chunk_ref, &plain).unwrap();
        let mut forged = enc.chunk_ref;
        forged.key[0] ^= 1;
        assert!(matches!(
            check_chunk_key(&forged, &plain),
            Err(ImageError::CorruptChunk { .. })
        ));
    }

    #[test]
    fn stored_objects_are_standard_aes_256_gcm_with_a_zero_nonce() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let plain = b"litecoin block file ".repeat(3000);
        let enc = encode_chunk(&plain, 1).unwrap();
        // An independent implementation opens what we sealed...
        let mut opened = enc.stored.clone();
        aes_gcm::Aes256Gcm::new(&enc.chunk_ref.key.into())
            .decrypt_in_place(aes_gcm::Nonce::from_slice(&NONCE), b"", &mut opened)
            .unwrap();
        let decompressed = zstd::bulk::decompress(&opened, plain.len()).unwrap();
        assert_eq!(decompressed, plain);
        // ...and we open what it sealed.
        let mut sealed = opened.clone();
        aes_gcm::Aes256Gcm::new(&enc.chunk_ref.key.into())
            .encrypt_in_place(aes_gcm::Nonce::from_slice(&NONCE), b"", &mut sealed)
            .unwrap();
        assert_eq!(sealed, enc.stored);
        assert_eq!(decode_chunk(&enc.chunk_ref, &sealed).unwrap(), plain);
    }

    #[test]
    fn reused_zstd_contexts_give_the_bytes_of_fresh_ones() {
        let inputs: Vec<Vec<u8>> = vec![
            b"state trie node ".repeat(40_000),
            b"x".to_vec(),
            (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect(),
        ];
        for level in [1, 3, 1] {
            for input in &inputs {
                let ours = compress(input, level).unwrap();
                assert_eq!(ours, zstd::bulk::compress(input, level).unwrap());
                let mut out = vec![0u8; input.len()];
                assert_eq!(decompress_into(&ours, &mut out).unwrap(), input.len());
                assert_eq!(&out, input);
            }
        }
    }

    #[test]
    fn convergent_equal_chunks_equal_ids() {
        let a = encode_chunk(b"same bytes", 1).unwrap();
        let b = encode_chunk(b"same bytes", 1).unwrap();
        assert_eq!(a.chunk_ref.id, b.chunk_ref.id);
        assert_eq!(a.stored, b.stored);
        let c = encode_chunk(b"other bytes", 1).unwrap();
        assert_ne!(a.chunk_ref.id, c.chunk_ref.id);
        // The store never sees the plaintext.
        assert!(!a.stored.windows(4).any(|w| w == b"same"));
    }

    #[test]
    fn flipped_byte_is_rejected() {
        let enc = encode_chunk(&b"x".repeat(4096), 1).unwrap();
        for pos in [0, enc.stored.len() / 2, enc.stored.len() - 1] {
            let mut bad = enc.stored.clone();
            bad[pos] ^= 0x01;
            match decode_chunk(&enc.chunk_ref, &bad) {
                Err(ImageError::CorruptChunk { id, .. }) => assert_eq!(id, enc.chunk_ref.id),
                other => panic!("expected CorruptChunk, got {other:?}"),
            }
        }
        // Truncated object.
        assert!(decode_chunk(&enc.chunk_ref, &enc.stored[1..]).is_err());
    }

    #[test]
    fn wrong_key_or_lengths_are_rejected() {
        let enc = encode_chunk(&b"y".repeat(4096), 1).unwrap();
        let mut r = enc.chunk_ref;
        r.key[0] ^= 1;
        assert!(decode_chunk(&r, &enc.stored).is_err());
        let mut r = enc.chunk_ref;
        r.plain_len -= 1;
        assert!(decode_chunk(&r, &enc.stored).is_err());
        let mut r = enc.chunk_ref;
        r.compressed = !r.compressed;
        assert!(decode_chunk(&r, &enc.stored).is_err());
    }
}
