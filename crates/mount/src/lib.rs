//! The read path of provisioned nodes: a lazy, verified, cached read-only FUSE mount of an image.
