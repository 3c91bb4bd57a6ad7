//! Fetch throughput of a chunk store: `get_many` (pipelined/batched), one-by-one `get`, and plain
//! loopback TCP as the ceiling. Used by bench/store-fetch.sh and as the "pipelined raw fetch" baseline
//! for the mount's cold reads.
//!
//! ```text
//! store-fetch-bench fill  --store URL --ids FILE --count N [--size BYTES]
//! store-fetch-bench store --store URL --count N [--size BYTES] [--batch N]
//! store-fetch-bench fetch --store URL --ids FILE [--batch N] [--mode many|single]
//! store-fetch-bench loopback --bytes N
//! ```
//! Each measurement prints one line: `<what> bytes=<n> secs=<s> MB/s=<rate>`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use store::ChunkId;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum FetchMode {
    /// `get_many` in batches.
    Many,
    /// `get` one object at a time.
    Single,
    /// `get_each` (streamed from a reused buffer) in batches.
    Each,
    /// 0-db client only: pipelined GETs (`ZdbClient::get_pipelined`) in batches.
    PipelinedGet,
    /// 0-db client only: pipelined MGETs (`ZdbClient::mget`) in batches.
    Mget,
}

#[derive(Subcommand)]
enum Command {
    /// Stores `count` pseudo-random objects of `size` bytes and writes their ids to `ids`.
    Fill {
        #[arg(long)]
        store: String,
        #[arg(long)]
        ids: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
    },
    /// Generates `count` fresh objects of `size` bytes in memory, then times storing them with `put_many`
    /// in batches of `batch` (`put` one by one when `batch` is 1).
    Store {
        #[arg(long)]
        store: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Fetches every id listed in `ids` and reports the rate.
    Fetch {
        #[arg(long)]
        store: String,
        #[arg(long)]
        ids: PathBuf,
        /// Ids per get_many call.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, value_enum, default_value_t = FetchMode::Many)]
        mode: FetchMode,
    },
    /// Sends `bytes` over a loopback TCP connection in 1 MiB writes and reads them back.
    Loopback {
        #[arg(long)]
        bytes: u64,
    },
}

/// `len` bytes from a xorshift generator (fast, not cryptographic: incompressible enough for a store).
fn pseudo_random(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

fn report(what: &str, bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what} bytes={bytes} secs={secs:.3} MB/s={:.0}",
        bytes as f64 / secs / 1e6
    );
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::Store {
            store,
            count,
            size,
            batch,
        } => store_objects(&store, count, size, batch),
        Command::Fill {
            store,
            ids,
            count,
            size,
        } => fill(&store, &ids, count, size),
        Command::Fetch {
            store,
            ids,
            batch,
            mode,
        } => fetch(&store, &ids, batch, mode),
        Command::Loopback { bytes } => loopback(bytes),
    }
}

fn store_objects(url: &str, count: usize, size: usize, batch: usize) -> Result<()> {
    let store = store::open(url)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut seed = nanos | 1;
    let objects: Vec<(ChunkId, Vec<u8>)> = (0..count)
        .map(|_| {
            let object = pseudo_random(&mut seed, size);
            (ChunkId::of(&object), object)
        })
        .collect();
    let start = Instant::now();
    if batch <= 1 {
        for (id, object) in &objects {
            store.put(id, object)?;
        }
    } else {
        for chunk in objects.chunks(batch) {
            let items: Vec<(ChunkId, &[u8])> =
                chunk.iter().map(|(id, o)| (*id, o.as_slice())).collect();
            store.put_many(&items)?;
        }
    }
    let what = if batch <= 1 {
        "put".to_string()
    } else {
        format!("put_many(batch={batch})")
    };
    report(&what, (count * size) as u64, start);
    Ok(())
}

fn fill(url: &str, ids: &Path, count: usize, size: usize) -> Result<()> {
    let store = store::open(url)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut listing = String::new();
    for _ in 0..count {
        let object = pseudo_random(&mut seed, size);
        let id = ChunkId::of(&object);
        store.put(&id, &object)?;
        listing.push_str(&id.to_hex());
        listing.push('\n');
    }
    std::fs::write(ids, listing).map_err(|e| format!("write {}: {e}", ids.display()))?;
    Ok(())
}

/// Bytes fetched and ids missing.
#[derive(Default)]
struct Fetched {
    bytes: u64,
    missing: usize,
}

impl Fetched {
    fn add(&mut self, value: Option<&[u8]>) {
        match value {
            Some(v) => self.bytes += v.len() as u64,
            None => self.missing += 1,
        }
    }
}

fn fetch(url: &str, ids_file: &Path, batch: usize, mode: FetchMode) -> Result<()> {
    let store = store::open(url)?;
    let text = std::fs::read_to_string(ids_file)
        .map_err(|e| format!("read {}: {e}", ids_file.display()))?;
    let ids = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| ChunkId::from_hex(l.trim()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let mut fetched = Fetched::default();
    let batches = ids.chunks(batch.max(1));
    match mode {
        FetchMode::Many => {
            for chunk in batches {
                for value in store.get_many(chunk)? {
                    fetched.add(value.as_deref());
                }
            }
        }
        FetchMode::PipelinedGet | FetchMode::Mget => {
            let client = match store::StoreLocation::parse(url)? {
                store::StoreLocation::Zdb(config) => store::zdb::ZdbClient::connect(config)?,
                store::StoreLocation::Dir(_) | store::StoreLocation::S3(_) => {
                    return Err("this mode needs a zdb store".into())
                }
            };
            for chunk in batches {
                let keys: Vec<&[u8]> = chunk.iter().map(|id| id.0.as_slice()).collect();
                let values = match mode {
                    FetchMode::Mget => client.mget(&keys)?,
                    _ => client.get_pipelined(&keys)?,
                };
                for value in values {
                    fetched.add(value.as_deref());
                }
            }
        }
        FetchMode::Each => {
            for chunk in batches {
                store.get_each(chunk, &mut |_, value| {
                    fetched.add(value);
                    Ok(())
                })?;
            }
        }
        FetchMode::Single => {
            for id in &ids {
                fetched.add(store.get(id)?.as_deref());
            }
        }
    }
    if fetched.missing > 0 {
        return Err(format!(
            "{} of {} ids are missing from the store",
            fetched.missing,
            ids.len()
        )
        .into());
    }
    let what = match mode {
        FetchMode::Many => format!("get_many(batch={batch})"),
        FetchMode::Single => "get".to_string(),
        FetchMode::Each => format!("get_each(batch={batch})"),
        FetchMode::PipelinedGet => format!("pipelined-get(batch={batch})"),
        FetchMode::Mget => format!("mget(batch={batch})"),
    };
    report(&what, fetched.bytes, start);
    Ok(())
}

fn loopback(bytes: u64) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        let block = vec![7u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            socket.write_all(&block[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut socket = TcpStream::connect(addr)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < bytes {
        let n = socket.read(&mut buf)?;
        if n == 0 {
            return Err(format!("loopback sender stopped after {got} bytes").into());
        }
        got += n as u64;
    }
    report("loopback-tcp", got, start);
    sender
        .join()
        .map_err(|_| "loopback sender thread panicked")??;
    Ok(())
}
