//! Helpers shared by the `thinnode node` end-to-end tests: run `thinnode node --state-dir STATE …`,
//! read `node ls --json`, and stop every node of a state directory when a test ends, even by a panic.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::common::{ok_stdout, run};

/// Runs `thinnode node --state-dir STATE ARGS`; the command must succeed; returns stdout.
pub fn node(state: &Path, args: &[&str]) -> String {
    let mut full = vec!["node", "--state-dir", state.to_str().expect("utf-8")];
    full.extend_from_slice(args);
    ok_stdout(&full)
}

/// `node ls --json`.
pub fn node_ls(state: &Path) -> serde_json::Value {
    serde_json::from_str(&node(state, &["ls", "--json"])).expect("ls --json")
}

/// The `node ls --json` entry of node `name`.
pub fn node_entry(state: &Path, name: &str) -> serde_json::Value {
    node_ls(state)
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed"))
}

/// Removes every node of a state directory (`node rm --force`: supervisors stopped, mounts gone) when
/// dropped, so a failing test leaves no processes or mounts behind.
pub struct NodesGuard {
    state: PathBuf,
}

impl NodesGuard {
    /// Guards the nodes of `state`.
    pub fn new(state: &Path) -> Self {
        NodesGuard {
            state: state.to_path_buf(),
        }
    }
}

impl Drop for NodesGuard {
    fn drop(&mut self) {
        let Some(state) = self.state.to_str() else {
            return;
        };
        let out = run(&["node", "--state-dir", state, "ls", "--json"]);
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return;
        };
        for entry in list.as_array().into_iter().flatten() {
            if let Some(name) = entry["name"].as_str() {
                let _ = run(&["node", "--state-dir", state, "rm", "--force", name]);
            }
        }
    }
}
