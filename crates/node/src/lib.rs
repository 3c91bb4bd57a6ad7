//! Provisioning blockchain nodes from thinnode images: turning a stopped node's data directory into a
//! base image (refusing node secrets), and running many nodes from one base, each with its own write
//! layer, network identity, ports, logs and a supervisor process that keeps its command running.
//!
//! # Layout
//!
//! - [`create_base`] (module `base`, with `scan`): a stopped node's directory → a base image.
//! - [`create`], [`start`], [`stop`], [`list`], [`reset`], [`promote`], [`remove`] (module `ops`): the
//!   node lifecycle, each under the node's lock.
//! - [`supervise`] (module `supervisor`): the process that keeps a node running — it starts the node's
//!   mount daemon (`thinnode mount … --layer …`) and the node command, restarts either by policy when it
//!   dies, and reports readiness to `node start` or to systemd.
//! - [`enable`] / [`disable`] (module `service`): the systemd units that bring nodes back after a
//!   reboot.
//! - Module `logs`: size-rotated `node.log` and `supervisor.log`.
//!
//! Everything a node is lives under one state directory (see [`StateDir`]): a JSON record per node
//! (written atomically), the layer directory, the merged data directory the node process sees, and logs.
//! Liveness is never taken from the record alone: it is derived from process ids checked against their
//! start times in `/proc` (see [`ProcessStamp`]), so `node ls` is right after a reboot or a `kill -9`.

#![deny(missing_docs)]

mod base;
mod command;
mod error;
mod identity;
mod logs;
mod mountd;
mod ops;
mod process;
mod scan;
mod service;
mod state;
mod supervisor;

pub use base::{create as create_base, BaseOptions, BaseSummary};
pub use error::{NodeError, Result};
pub use identity::IdentityReport;
pub use logs::{tail, LogLimits};
pub use ops::{
    create, list, promote, remove, reset, start, stop, CreateOptions, NodeInfo, PromoteOptions,
    PromoteSummary, StartOptions,
};
pub use process::ProcessStamp;
pub use scan::Secret;
pub use service::{
    disable, enable, notify_service_manager, UnitChange, DEFAULT_UNIT_DIR, NODE_UNIT, UNIT_DIR_ENV,
};
pub use state::{
    NodeRecord, NodeState, RestartPolicy, StateDir, Status, DEFAULT_STATE_DIR, STATE_DIR_ENV,
};
pub use supervisor::{supervise, SuperviseOptions};
