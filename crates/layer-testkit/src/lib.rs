//! Test tools for thinnode's write layers (crate `layer`); not part of the product.
//!
//! - [`posix_suite`]: named POSIX behaviour checks, each run inside a directory, so that a plain local
//!   directory (the reference), an overlay layer and a blocks layer can be compared check by check.
//! - `posix-suite prepare-base DIR` / `posix-suite run DIR`: the suite as a command (exit 1 if a check
//!   failed).
//! - `blocks-mount LAYER_DIR LOWER_DIR TARGET`: one blocks-layer mount served in the foreground, for crash
//!   tests (kill it) and benchmarks.

#![deny(missing_docs)]

pub mod posix_suite;
