//! `blocks-mount LAYER_DIR LOWER_DIR TARGET`: mounts a blocks layer (created with the default options
//! if LAYER_DIR holds none) over LOWER_DIR at TARGET, prints `READY` on stdout once the mount answers,
//! and serves until SIGTERM/SIGINT/SIGHUP or until the mount is unmounted from outside; then flushes the
//! block maps and unmounts. Exit status 1 on an error, 2 on a usage error.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use layer::{BlocksLayer, BlocksOptions};

fn serve(layer_dir: &Path, lower: &Path, target: &Path) -> Result<(), String> {
    mount::install_shutdown_handler().map_err(|e| e.to_string())?;
    let layer = BlocksLayer::open_or_create(layer_dir, BlocksOptions::default())
        .map_err(|e| e.to_string())?;
    let mounted = layer.mount(lower, target).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    writeln!(out, "READY").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    while mounted.is_running() && !mount::shutdown_requested() {
        std::thread::sleep(Duration::from_millis(25));
    }
    mounted.unmount().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layer_dir, lower, target] = args.as_slice() else {
        eprintln!("usage: blocks-mount LAYER_DIR LOWER_DIR TARGET");
        return ExitCode::from(2);
    };
    match serve(Path::new(layer_dir), Path::new(lower), Path::new(target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blocks-mount: {e}");
            ExitCode::FAILURE
        }
    }
}
