//! Fuzz target: an image manifest parsed from arbitrary bytes (seeded with valid manifests made by
//! `thinnode pack`, which libFuzzer mutates), then every read the mount makes walked over it. Bad input
//! must give an error, never a panic, a hang or an allocation out of proportion to the input.
#![no_main]

use image::ImageManifest;
use libfuzzer_sys::fuzz_target;

/// Most inodes and chunks walked per input, so one input stays fast.
const WALK_LIMIT: u64 = 512;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = ImageManifest::from_bytes(data.to_vec()) else {
        return;
    };
    let _ = m.check_structure();
    let _ = m.check_body_hash();
    let _ = m.is_signed();
    let _ = m.signer();
    let _ = m.stores();
    let _ = m.labels();
    let _ = (m.chunk_size(), m.manifest_len());
    for i in 0..m.unique_chunk_count().min(WALK_LIMIT) {
        let _ = m.unique_chunk(i as u32);
    }
    for ino in 1..=m.inode_count().min(WALK_LIMIT) {
        let Ok(attr) = m.getattr(ino) else { continue };
        let _ = m.readlink(ino);
        let _ = m.xattrs(ino);
        let _ = m.source_stamp(ino);
        let _ = m.seek_data(ino, 0);
        let _ = m.seek_hole(ino, 0);
        let _ = m.seek_data(ino, attr.size / 2);
        for index in 0..4 {
            let _ = m.chunk_slot(ino, index);
            let _ = m.chunk(ino, index);
        }
        let _ = m.file_chunks(ino);
        if let Ok(entries) = m.readdir(ino, 0) {
            for e in entries.iter().take(WALK_LIMIT as usize) {
                let _ = m.lookup(ino, &e.name);
            }
        }
        let _ = m.readdir(ino, 1);
        let _ = m.lookup(ino, b"missing");
    }
});
