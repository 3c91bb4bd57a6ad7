//! The base chain: a litecoind regtest data directory (made here, or given), and the fingerprint of
//! every block in it, against which every block a node later serves is checked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::procs::{Log, Owner};
use crate::rpc::{block_bytes, Rpc, RPC_PASSWORD, RPC_USER};

/// A block as the base holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPrint {
    /// Block hash (hex, as RPC gives it).
    pub hash: String,
    /// BLAKE3 of the block's serialized bytes.
    pub digest: [u8; 32],
    /// Serialized size in bytes.
    pub size: u64,
}

impl BlockPrint {
    /// The fingerprint of `bytes`, a block with hash `hash`.
    pub fn of(hash: &str, bytes: &[u8]) -> BlockPrint {
        BlockPrint {
            hash: hash.to_string(),
            digest: *blake3::hash(bytes).as_bytes(),
            size: bytes.len() as u64,
        }
    }
}

/// A litecoind regtest node run by the soak itself on a plain directory.
struct PlainNode {
    child: Child,
    rpc: Rpc,
}

impl PlainNode {
    fn start(dir: &Path, owner: &Owner) -> anyhow::Result<PlainNode> {
        let (p2p, rpc_port) = (testkit::free_port(), testkit::free_port());
        let child = Command::new("litecoind")
            .arg("-regtest")
            .arg(format!("-datadir={}", dir.display()))
            .arg(format!("-port={p2p}"))
            .arg(format!("-rpcport={rpc_port}"))
            .arg(format!("-rpcuser={RPC_USER}"))
            .arg(format!("-rpcpassword={RPC_PASSWORD}"))
            .args([
                "-connect=0",
                "-listen=0",
                "-fallbackfee=0.0001",
                "-printtoconsole=0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start litecoind (is it installed? scripts/setup.sh installs it)")?;
        owner.add_process(child.id())?;
        let mut node = PlainNode {
            child,
            rpc: Rpc::new(rpc_port, Duration::from_secs(300)),
        };
        let t = Instant::now();
        while node.rpc.height().is_err() {
            if let Ok(Some(status)) = node.child.try_wait() {
                bail!("litecoind on {} exited at start ({status})", dir.display());
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!("litecoind on {} did not answer RPC in 120 s", dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(node)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        self.rpc.call("stop", json!([]))?;
        let t = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t.elapsed() > Duration::from_secs(120) {
                let _ = self.child.kill();
                bail!("litecoind did not stop in 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// The base chain: where it is, its tip, and every block's fingerprint by height.
pub struct BaseChain {
    /// The stopped node's data directory.
    pub dir: PathBuf,
    /// Blocks by height, 0 to the tip.
    pub blocks: Vec<BlockPrint>,
    /// The private key (WIF) the base's coinbases pay, when the soak mined the base itself: the nodes
    /// import it, so they spend mature coins (and blocks carry transactions) from the start.
    pub miner_key: Option<String>,
}

impl BaseChain {
    /// The tip height.
    pub fn height(&self) -> u64 {
        self.blocks.len().saturating_sub(1) as u64
    }

    /// The tip hash.
    pub fn tip(&self) -> &str {
        self.blocks.last().map(|b| b.hash.as_str()).unwrap_or("")
    }

    /// Serialized bytes of all blocks.
    pub fn bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.size).sum()
    }
}

/// Opens the chain in `dir` — making it first with `generate` blocks when it is given (a wallet mines
/// them; `base create --strip-secrets` leaves the wallet out of the image) — and fingerprints every
/// block; litecoind is stopped again before this returns.
pub fn prepare(
    dir: &Path,
    generate: Option<u64>,
    owner: &Owner,
    log: &Log,
) -> anyhow::Result<BaseChain> {
    std::fs::create_dir_all(dir)?;
    let node = PlainNode::start(dir, owner)?;
    let mut miner_key = None;
    if let Some(blocks) = generate {
        node.rpc.call("createwallet", json!(["miner"]))?;
        let miner = node.rpc.wallet("miner");
        let addr = miner.call("getnewaddress", json!(["", "bech32"]))?;
        miner_key = miner
            .call("dumpprivkey", json!([addr]))?
            .as_str()
            .map(str::to_string);
        let mut left = blocks;
        while left > 0 {
            let n = left.min(100);
            node.rpc.call("generatetoaddress", json!([n, addr]))?;
            left -= n;
        }
        log.line(format!(
            "base chain: {blocks} blocks mined in {}",
            dir.display()
        ));
    }
    let height = node.rpc.height()?;
    let heights: Vec<Value> = (0..=height).map(|h| json!([h])).collect();
    let mut blocks = Vec::with_capacity(heights.len());
    for group in heights.chunks(200) {
        let hashes = node.rpc.batch("getblockhash", group)?;
        let params: Vec<Value> = hashes.iter().map(|h| json!([h, 0])).collect();
        let raws = node.rpc.batch("getblock", &params)?;
        for (hash, raw) in hashes.iter().zip(&raws) {
            let hash = hash.as_str().context("getblockhash: not a string")?;
            blocks.push(BlockPrint::of(hash, &block_bytes(raw)?));
        }
    }
    node.stop()?;
    let chain = BaseChain {
        dir: dir.to_path_buf(),
        blocks,
        miner_key,
    };
    log.line(format!(
        "base chain: height {}, tip {}, {} bytes of blocks fingerprinted",
        chain.height(),
        chain.tip(),
        chain.bytes()
    ));
    Ok(chain)
}
