//! The container image: `scripts/container-test.sh` builds it from the Dockerfile with podman (base
//! images made locally, cached between runs) and runs a zdb server container, a pack container and a
//! FUSE mount container against it, comparing bytes. Skipped with a printed reason where podman,
//! runc or debootstrap is missing or the test does not run as root, or when
//! `THINNODE_SKIP_CONTAINER_TEST=1`; under `CI=true` a skip fails.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn skip(why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("container image test: cannot run ({why}) and CI=true forbids skipping");
    }
    eprintln!("SKIP container image test: {why}");
    true
}

fn missing_tool() -> Option<&'static str> {
    ["podman", "runc", "debootstrap"].into_iter().find(|tool| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_image_builds_from_the_dockerfile_and_serves_zdb_pack_and_mount() {
    if std::env::var("THINNODE_SKIP_CONTAINER_TEST").is_ok_and(|v| v == "1")
        && skip("THINNODE_SKIP_CONTAINER_TEST=1")
    {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && skip("not running as root") {
        return;
    }
    if let Some(tool) = missing_tool() {
        if skip(&format!(
            "{tool} is not installed (scripts/setup.sh installs it)"
        )) {
            return;
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let start = Instant::now();
    let status = Command::new("bash")
        .arg(root.join("scripts/container-test.sh"))
        .current_dir(&root)
        .status()
        .expect("run scripts/container-test.sh");
    println!("container test: {} s", start.elapsed().as_secs());
    assert!(
        status.success(),
        "scripts/container-test.sh failed: {status}"
    );
}
