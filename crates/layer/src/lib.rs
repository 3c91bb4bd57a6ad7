//! Write layers: a node's own writes kept apart from the read-only base (kernel overlayfs, and block-level copy-on-write).
