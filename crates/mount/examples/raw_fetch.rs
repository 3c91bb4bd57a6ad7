//! Benchmark baseline: fetches the stored chunks of one file of an image straight from a store, pipelined
//! (several threads, each asking for a batch of chunks per request), without decoding or caching.
//! Prints `bytes seconds` of stored bytes fetched. With `decode` as the last argument every object is also
//! verified and decoded (`image::decode_chunk`), the minimum work any correct reader must do.
//!
//! Usage: raw_fetch IMAGE PATH_IN_IMAGE STORE_URL [THREADS] [BATCH] [decode]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(image), Some(path), Some(url)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: raw_fetch IMAGE PATH_IN_IMAGE STORE_URL [THREADS] [BATCH]".into());
    };
    let threads: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let batch: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let decode = args.get(6).is_some_and(|a| a == "decode");
    let manifest = image::ImageManifest::open(Path::new(image))?;
    let mut ino = image::ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = manifest
            .lookup(ino, part.as_bytes())?
            .ok_or_else(|| format!("{path}: not in the image"))?
            .ino;
    }
    let refs: Vec<image::ChunkRef> = manifest.file_chunks(ino)?.into_iter().flatten().collect();
    let store = store::open(url)?;
    let batches: Vec<&[image::ChunkRef]> = refs.chunks(batch.max(1)).collect();
    let next = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else { return };
                let ids: Vec<store::ChunkId> = b.iter().map(|r| r.id).collect();
                match store.get_many(&ids) {
                    Ok(objs) => {
                        let n: usize = objs.iter().flatten().map(Vec::len).sum();
                        if decode {
                            for (r, obj) in b.iter().zip(&objs) {
                                let Some(obj) = obj else { continue };
                                if let Err(e) = image::decode_chunk(r, obj) {
                                    eprintln!("chunk {}: {e}", r.id);
                                }
                            }
                        }
                        total.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("fetch failed: {e}"),
                }
            });
        }
    });
    println!(
        "{} {:.6}",
        total.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
