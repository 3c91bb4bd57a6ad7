//! One module per command; each exposes `Args` (clap) and `run`.

pub mod base;
pub mod completions;
pub mod convert;
pub mod fl;
pub mod hydrate;
pub mod inspect;
pub mod key;
pub mod layer;
pub mod mount;
pub mod node;
pub mod pack;
pub mod remote;
pub mod serve_store;
pub mod store;
pub mod umount;
pub mod unpack;
pub mod verify;
pub mod zdb;
