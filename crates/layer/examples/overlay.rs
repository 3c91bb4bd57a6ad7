//! Mounts or unmounts an overlay layer from the shell (used by bench/layers.sh until `thinnode mount
//! --layer` exists):
//!
//!   overlay mount LAYER_DIR LOWER TARGET     (creates the layer with default options if missing)
//!   overlay umount LAYER_DIR TARGET

use std::path::Path;
use std::process::ExitCode;

use layer::{OverlayLayer, OverlayOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["mount", dir, lower, target] => {
            OverlayLayer::open_or_create(Path::new(dir), OverlayOptions::default())
                .and_then(|l| l.mount(Path::new(lower), Path::new(target)))
        }
        ["umount", dir, target] => {
            OverlayLayer::open(Path::new(dir)).and_then(|l| l.unmount(Path::new(target)))
        }
        _ => {
            eprintln!(
                "usage: overlay mount LAYER_DIR LOWER TARGET | overlay umount LAYER_DIR TARGET"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
