//! The rfs block codec: how rfs cuts a file into blocks and turns each block into a stored object.
//!
//! For a plaintext block `P` (at most [`BLOCK_SIZE`] bytes):
//! `key = BLAKE2b-256(P)`; `stored = AES-256-GCM(key, nonce = key[0..12], no AAD)(snappy_raw(P)) ‖ tag`;
//! `id = BLAKE2b-256(stored)`. The flist records `(id, key)` per block; stores keep `stored` under `id`.

use std::cell::RefCell;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Size rfs cuts files into (the last block of a file may be shorter; an empty file has none).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// Length of the AES-GCM tag that ends every stored block.
pub const TAG_LEN: usize = 16;

/// `BLAKE2b-256` of a full block of zeros: the key of every all-zero 512 KiB block (rfs stores holes of
/// sparse files as such blocks).
pub const ZERO_BLOCK_KEY: [u8; 32] = [
    0x0a, 0x93, 0x17, 0x45, 0x57, 0xb2, 0xe0, 0x66, 0x8f, 0x25, 0x31, 0x53, 0x14, 0x15, 0x14, 0x22,
    0x80, 0x35, 0x8e, 0xe3, 0x26, 0x05, 0xd0, 0x59, 0xda, 0xb1, 0xce, 0x8e, 0xbb, 0xb1, 0xcc, 0x01,
];

/// What an flist records about one block of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// `BLAKE2b-256` of the stored object: the key under which stores keep it.
    pub id: [u8; 32],
    /// `BLAKE2b-256` of the plaintext: the AES-256-GCM key (its first 12 bytes are the nonce).
    pub key: [u8; 32],
}

/// Why a stored block cannot be turned back into its plaintext, or a plaintext into a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The stored bytes do not hash to the block id.
    #[error("stored object does not hash (BLAKE2b-256) to its id")]
    IdMismatch,
    /// AES-GCM refused the stored bytes (wrong key, or damaged data).
    #[error("authentication tag does not match (wrong key or data)")]
    Decrypt,
    /// The decrypted bytes are not valid snappy data.
    #[error("snappy decompression failed: {0}")]
    Decompress(String),
    /// The plaintext has another length than the file needs at this block.
    #[error("plaintext is {got} bytes, the flist needs {expected}")]
    Length {
        /// Length found.
        got: usize,
        /// Length expected.
        expected: usize,
    },
    /// The plaintext does not hash to the recorded key.
    #[error("plaintext does not hash (BLAKE2b-256) to the recorded key")]
    KeyMismatch,
    /// Encoding failed (a block larger than snappy can take).
    #[error("cannot encode a block: {0}")]
    Encode(String),
}

/// `BLAKE2b` with a 32-byte digest, no key, salt or personalisation (what rfs uses for ids and keys).
pub fn blake2b_256(data: &[u8]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(data);
    h.finalize().into()
}

fn cipher(key: &[u8; 32]) -> Result<LessSafeKey, BlockError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| BlockError::Encode("AES-256-GCM refused a 32-byte key".into()))
}

fn nonce(key: &[u8; 32]) -> Nonce {
    let mut n = [0u8; 12];
    n.copy_from_slice(&key[..12]);
    Nonce::assume_unique_for_key(n)
}

thread_local! {
    /// This thread's snappy encoder (it owns a hash table that is costly to make per block).
    static ENCODER: RefCell<snap::raw::Encoder> = RefCell::new(snap::raw::Encoder::new());
}

/// One encoded block: the flist row and the object stores keep.
#[derive(Clone, Debug)]
pub struct EncodedBlock {
    /// The `(id, key)` the flist records.
    pub block: Block,
    /// The stored object (ciphertext ‖ tag).
    pub stored: Vec<u8>,
}

/// Encodes one plaintext block exactly as rfs does (so equal blocks give equal stored bytes and ids, and
/// rfs reads what this writes).
pub fn encode_block(plain: &[u8]) -> Result<EncodedBlock, BlockError> {
    let key = blake2b_256(plain);
    let mut buf = ENCODER
        .with(|e| e.borrow_mut().compress_vec(plain))
        .map_err(|e| BlockError::Encode(e.to_string()))?;
    buf.reserve_exact(TAG_LEN);
    cipher(&key)?
        .seal_in_place_append_tag(nonce(&key), Aad::empty(), &mut buf)
        .map_err(|_| BlockError::Encode("AES-GCM encryption failed".into()))?;
    Ok(EncodedBlock {
        block: Block {
            id: blake2b_256(&buf),
            key,
        },
        stored: buf,
    })
}

/// Checks that `stored` hashes to `id`.
pub fn check_id(id: &[u8; 32], stored: &[u8]) -> Result<(), BlockError> {
    if &blake2b_256(stored) != id {
        return Err(BlockError::IdMismatch);
    }
    Ok(())
}

/// Decrypts a stored object in place (`buf` holds the stored bytes); returns the length of the snappy
/// data now at the start of `buf`.
pub fn decrypt_in_place(key: &[u8; 32], buf: &mut [u8]) -> Result<usize, BlockError> {
    cipher(key)?
        .open_in_place(nonce(key), Aad::empty(), buf)
        .map(|plain| plain.len())
        .map_err(|_| BlockError::Decrypt)
}

/// The plaintext length a snappy raw buffer announces.
pub fn decompressed_len(compressed: &[u8]) -> Result<usize, BlockError> {
    snap::raw::decompress_len(compressed).map_err(|e| BlockError::Decompress(e.to_string()))
}

/// Decompresses snappy raw data into `out`, which must be exactly the announced length; returns it.
pub fn decompress_into(compressed: &[u8], out: &mut [u8]) -> Result<usize, BlockError> {
    let announced = decompressed_len(compressed)?;
    if announced != out.len() {
        return Err(BlockError::Length {
            got: announced,
            expected: out.len(),
        });
    }
    snap::raw::Decoder::new()
        .decompress(compressed, out)
        .map_err(|e| BlockError::Decompress(e.to_string()))
}

/// Checks that `plain` hashes to `key`.
pub fn check_key(key: &[u8; 32], plain: &[u8]) -> Result<(), BlockError> {
    if &blake2b_256(plain) != key {
        return Err(BlockError::KeyMismatch);
    }
    Ok(())
}

/// Verifies and decodes one stored block: the stored bytes must hash to the id, decrypt under the key,
/// decompress to `expected_len` bytes, and those bytes must hash to the key. Never returns wrong bytes.
pub fn decode_block(
    block: &Block,
    stored: &[u8],
    expected_len: usize,
) -> Result<Vec<u8>, BlockError> {
    check_id(&block.id, stored)?;
    let mut buf = stored.to_vec();
    let n = decrypt_in_place(&block.key, &mut buf)?;
    let compressed = buf.get(..n).unwrap_or_default();
    let mut plain = vec![0u8; expected_len];
    decompress_into(compressed, &mut plain)?;
    check_key(&block.key, &plain)?;
    Ok(plain)
}

/// Whether `block` is a full-size block of zeros (known from its key alone, so it need not be fetched).
pub fn is_zero_block(block: &Block) -> bool {
    block.key == ZERO_BLOCK_KEY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_key_is_the_hash_of_a_zero_block() {
        assert_eq!(blake2b_256(&vec![0u8; BLOCK_SIZE]), ZERO_BLOCK_KEY);
        let enc = encode_block(&vec![0u8; BLOCK_SIZE]).unwrap();
        assert!(is_zero_block(&enc.block));
        // The fixtures' zero block (rfs 75e19dc): same id, same stored size.
        assert_eq!(
            hex::encode(enc.block.id),
            "e8fd6b2d9a2e8851d12163c43f3024c31fcac6b486bceacf042d323f8e6f6640"
        );
        assert_eq!(enc.stored.len(), 24611);
    }

    #[test]
    fn round_trip_and_every_check() {
        let plain = b"hello rfs block ".repeat(1000);
        let enc = encode_block(&plain).unwrap();
        assert_eq!(
            decode_block(&enc.block, &enc.stored, plain.len()).unwrap(),
            plain
        );
        let mut bad = enc.stored.clone();
        bad[3] ^= 1;
        assert_eq!(
            decode_block(&enc.block, &bad, plain.len()),
            Err(BlockError::IdMismatch)
        );
        let mut wrong_key = enc.block;
        wrong_key.key[0] ^= 1;
        assert_eq!(
            decode_block(&wrong_key, &enc.stored, plain.len()),
            Err(BlockError::Decrypt)
        );
        assert!(matches!(
            decode_block(&enc.block, &enc.stored, plain.len() - 1),
            Err(BlockError::Length { .. })
        ));
    }

    #[test]
    fn a_consistent_forgery_is_caught_by_the_key_check() {
        // A stored object made under key K for plaintext P, recorded as (id, K) but K != hash(P).
        let plain = b"not what the key says".to_vec();
        let key = blake2b_256(b"something else");
        let mut buf = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
        cipher(&key)
            .unwrap()
            .seal_in_place_append_tag(nonce(&key), Aad::empty(), &mut buf)
            .unwrap();
        let block = Block {
            id: blake2b_256(&buf),
            key,
        };
        assert_eq!(
            decode_block(&block, &buf, plain.len()),
            Err(BlockError::KeyMismatch)
        );
    }

    #[test]
    fn stored_objects_are_standard_aes_256_gcm_over_raw_snappy() {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let enc = encode_block(&plain).unwrap();
        let mut opened = enc.stored.clone();
        aes_gcm::Aes256Gcm::new(&enc.block.key.into())
            .decrypt_in_place(
                aes_gcm::Nonce::from_slice(&enc.block.key[..12]),
                b"",
                &mut opened,
            )
            .unwrap();
        assert_eq!(
            snap::raw::Decoder::new().decompress_vec(&opened).unwrap(),
            plain
        );
    }
}
