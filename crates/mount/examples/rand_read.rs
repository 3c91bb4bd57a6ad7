//! Benchmark tool: random 4 KiB `pread`s over a file from several threads for a fixed time; prints the
//! reads per second.
//!
//! Usage: rand_read FILE [SECONDS] [THREADS]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        return Err("usage: rand_read FILE [SECONDS] [THREADS]".into());
    };
    let secs: f64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let threads: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let file = File::open(path)?;
    let blocks = file.metadata()?.len() / 4096;
    if blocks == 0 {
        return Err("file smaller than 4 KiB".into());
    }
    let reads = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads.max(1) {
            let (file, reads) = (&file, &reads);
            s.spawn(move || {
                // xorshift: cheap, deterministic per thread.
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                let mut buf = [0u8; 4096];
                let mut n = 0u64;
                while n % 256 != 0 || Instant::now() < deadline {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let block = x % blocks;
                    if file.read_exact_at(&mut buf, block * 4096).is_err() {
                        eprintln!("read failed at block {block}");
                        return;
                    }
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!("{:.0}", reads.load(Ordering::Relaxed) as f64 / elapsed);
    Ok(())
}
