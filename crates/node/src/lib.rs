//! Provisioning blockchain nodes from thinnode images: turning a stopped node's data directory into a
//! base image (refusing node secrets), and running many nodes from one base, each with its own write
//! layer, network identity, ports, logs and a supervisor process that keeps its command running.
//!
//! Everything a node is lives under one state directory (see [`StateDir`]): a JSON record per node
//! (written atomically), the layer directory, the merged data directory the node process sees, and logs.
//! Liveness is never taken from the record alone: it is derived from process ids checked against their
//! start times in `/proc` (see [`ProcessStamp`]), so `node ls` is right after a reboot or a `kill -9`.

#![warn(missing_docs)]

pub mod base;
mod error;
pub mod identity;
pub mod ops;
pub mod process;
pub mod scan;
pub mod state;
pub mod supervisor;

pub use error::{NodeError, Result};
pub use process::ProcessStamp;
pub use state::{NodeRecord, NodeState, RestartPolicy, StateDir};
