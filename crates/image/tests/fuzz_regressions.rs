//! Inputs found by the fuzz targets in `fuzz/`, kept so the bugs they showed stay fixed.

use image::ImageManifest;

/// A manifest whose file records point their chunk slots at an index so large that `index * record
/// length + record length` overflowed (a panic with overflow checks, as in debug builds and the fuzzer).
/// Every read must answer with an error instead.
#[test]
fn chunk_slot_far_past_the_table_is_an_error() {
    let bytes = include_bytes!("fuzz/slot-index-overflow.img").to_vec();
    let Ok(m) = ImageManifest::from_bytes(bytes) else {
        return;
    };
    let mut errors = 0;
    for ino in 1..=m.inode_count().min(512) {
        for index in 0..4 {
            errors += usize::from(m.chunk_slot(ino, index).is_err());
            let _ = m.chunk(ino, index);
        }
        let _ = m.file_chunks(ino);
        let _ = m.seek_data(ino, 0);
        let _ = m.seek_hole(ino, 0);
    }
    assert!(errors > 0, "the damaged slot index must be reported");
}
