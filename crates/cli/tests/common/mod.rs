//! Helpers shared by the end-to-end tests: run the real `thinnode` binary and check it succeeded.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

pub mod mounts;

use std::process::{Command, Output};

/// The `thinnode` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_thinnode");

/// Runs `thinnode ARGS` and returns what it did.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run thinnode")
}

/// Standard output followed by standard error, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `thinnode ARGS`, fails the test (showing both streams) unless it succeeded, and returns the
/// success's output.
fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "thinnode {args:?} failed:\n{}",
        text(&out)
    );
    out
}

/// Like [`run`], but the command must succeed; returns stdout followed by stderr.
pub fn ok_text(args: &[&str]) -> String {
    text(&run_ok(args))
}

/// Like [`run`], but the command must succeed; returns stdout only.
pub fn ok_stdout(args: &[&str]) -> String {
    String::from_utf8_lossy(&run_ok(args).stdout).into_owned()
}
