//! Fuzz target: the chunk decoder (thinnode's encoding; rfs blocks are the `flist` crate's). Three ways in, chosen by the first byte:
//! 0. arbitrary stored bytes under a chunk reference whose id and length match them (so the AEAD check is
//!    reached): decoding must fail (the tag cannot match), never panic;
//! 1. arbitrary bytes sealed with AES-256-GCM as the encoder seals them, claimed compressed or not with an
//!    arbitrary plaintext length (so zstd and the length check see hostile input): a success must return
//!    exactly the claimed length;
//! 2. arbitrary plaintext encoded then decoded: the same bytes come back, and a flipped byte in the stored
//!    object (id recomputed) is refused.
#![no_main]

use image::{decode_chunk, encode_chunk, ChunkEncoding, ChunkId, ChunkRef};
use libfuzzer_sys::fuzz_target;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

/// Splits off `n` bytes (zero-padded when the input is short).
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fn reference(stored: &[u8], key: [u8; 32], plain_len: u32, compressed: bool) -> ChunkRef {
    ChunkRef {
        id: ChunkId::of(stored),
        key,
        plain_len,
        stored_len: stored.len() as u32,
        compressed,
        encoding: ChunkEncoding::Thinnode,
    }
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let [mode, flags] = take::<2>(&mut data);
    let key = take::<32>(&mut data);
    let plain_len = u32::from_le_bytes(take::<4>(&mut data)) % (8 << 20);
    let compressed = flags & 1 != 0;
    match mode % 3 {
        0 => {
            let r = reference(data, key, plain_len, compressed);
            assert!(decode_chunk(&r, data).is_err(), "unsealed bytes decoded");
        }
        1 => {
            let mut sealed = data.to_vec();
            let cipher = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32-byte key"));
            cipher
                .seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), &mut sealed)
                .expect("seal");
            let claimed = if compressed { plain_len } else { data.len() as u32 };
            let r = reference(&sealed, key, claimed, compressed);
            if let Ok(plain) = decode_chunk(&r, &sealed) {
                assert_eq!(plain.len(), claimed as usize, "decoded length differs from the claim");
                if !compressed {
                    assert_eq!(&plain[..], data);
                }
            }
        }
        _ => {
            let Ok(encoded) = encode_chunk(data, i32::from(flags % 4)) else {
                return;
            };
            let plain = decode_chunk(&encoded.chunk_ref, &encoded.stored).expect("round trip");
            assert_eq!(&plain[..], data);
            if !encoded.stored.is_empty() {
                let mut bad = encoded.stored.clone();
                let i = usize::from(flags) % bad.len();
                bad[i] ^= 0x55;
                let r = reference(&bad, encoded.chunk_ref.key, encoded.chunk_ref.plain_len, encoded.chunk_ref.compressed);
                assert!(decode_chunk(&r, &bad).is_err(), "a damaged chunk decoded");
            }
        }
    }
});
