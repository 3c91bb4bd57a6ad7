//! A litecoind JSON-RPC client (HTTP POST with basic auth, single calls and batches).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{json, Value};

/// The RPC user and password every soak node runs with (`-rpcuser`/`-rpcpassword`): a cookie file
/// would have to be read through the node's mount, which is what the faults break.
pub const RPC_USER: &str = "soak";
/// See [`RPC_USER`].
pub const RPC_PASSWORD: &str = "soak";

/// A client for one node's RPC port.
#[derive(Clone)]
pub struct Rpc {
    agent: ureq::Agent,
    url: String,
    auth: String,
}

impl Rpc {
    /// A client for `127.0.0.1:port` whose calls give up after `timeout`.
    pub fn new(port: u16, timeout: Duration) -> Rpc {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(1))))
            // No idle keep-alive connections: litecoind's shutdown waits for open RPC connections
            // (up to -rpcservertimeout, 30 s), which would turn every clean stop into a kill.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build();
        Rpc {
            agent: config.into(),
            url: format!("http://127.0.0.1:{port}/"),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{RPC_USER}:{RPC_PASSWORD}"))
            ),
        }
    }

    /// The same node, through its wallet `name`.
    pub fn wallet(&self, name: &str) -> Rpc {
        Rpc {
            url: format!("{}wallet/{name}", self.url),
            ..self.clone()
        }
    }

    fn post(&self, body: &Value) -> anyhow::Result<Value> {
        let mut response = self
            .agent
            .post(&self.url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| anyhow!("RPC {}: {e}", self.url))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .with_context(|| format!("RPC {}: reading the answer", self.url))?;
        serde_json::from_str(&text)
            .with_context(|| format!("RPC {}: HTTP {status}: {}", self.url, truncate(&text)))
    }

    /// Calls `method` with `params`; an error reply is an error.
    pub fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let reply =
            self.post(&json!({"jsonrpc": "1.0", "id": 0, "method": method, "params": params}))?;
        result_of(method, reply)
    }

    /// Calls `method` once per parameter list in one request; results in order.
    pub fn batch(&self, method: &str, params: &[Value]) -> anyhow::Result<Vec<Value>> {
        if params.is_empty() {
            return Ok(Vec::new());
        }
        let body: Vec<Value> = params
            .iter()
            .enumerate()
            .map(|(i, p)| json!({"jsonrpc": "1.0", "id": i, "method": method, "params": p}))
            .collect();
        let Value::Array(replies) = self.post(&Value::Array(body))? else {
            bail!("{method}: a batch answer is not an array");
        };
        let mut out: Vec<Option<Value>> = vec![None; params.len()];
        for reply in replies {
            let id = reply["id"].as_u64().unwrap_or(u64::MAX) as usize;
            let value = result_of(method, reply)?;
            if let Some(slot) = out.get_mut(id) {
                *slot = Some(value);
            }
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| anyhow!("{method}: a batch answer is missing")))
            .collect()
    }

    /// `getblockcount`.
    pub fn height(&self) -> anyhow::Result<u64> {
        self.call("getblockcount", json!([]))?
            .as_u64()
            .ok_or_else(|| anyhow!("getblockcount: not a number"))
    }
}

fn result_of(method: &str, reply: Value) -> anyhow::Result<Value> {
    if !reply["error"].is_null() {
        bail!("{method}: {}", reply["error"]);
    }
    Ok(reply["result"].clone())
}

fn truncate(s: &str) -> &str {
    s.get(..200).unwrap_or(s)
}

/// Raw bytes of a block from `getblock HASH 0` (hex).
pub fn block_bytes(value: &Value) -> anyhow::Result<Vec<u8>> {
    let s = value
        .as_str()
        .ok_or_else(|| anyhow!("getblock: not a string"))?;
    hex::decode(s).context("getblock: not hex")
}
