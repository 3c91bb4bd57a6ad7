//! Overlay layers over a real `thinnode mount` (FUSE lower): the POSIX suite, `thinnode layer du` and
//! `thinnode layer reset`, and the image staying intact (`verify --deep`) whatever the node wrote.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok_stdout as thinnode_ok, run as thinnode, BIN};
use layer::{BlocksLayer, BlocksOptions, OverlayLayer, OverlayOptions};
use layer_testkit::posix_suite;
use testkit::{fuse_available, ChildGuard};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn is_mounted(mnt: &Path) -> bool {
    match (fs::metadata(mnt), mnt.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Detaches whatever is mounted at the path when dropped.
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A foreground `thinnode mount`, SIGTERMed on drop (the guard detaches a leftover mount).
struct ImageMount {
    child: ChildGuard,
    _detach: DetachOnDrop,
}

impl ImageMount {
    fn start(image: &Path, mnt: &Path, cache: &Path) -> ImageMount {
        fs::create_dir_all(mnt).expect("mkdir mnt");
        let log = mnt.with_extension("log");
        let child = Command::new(BIN)
            .arg("mount")
            .arg(image)
            .arg(mnt)
            .arg("--cache")
            .arg(cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log"))
            .spawn()
            .expect("spawn mount");
        let mut m = ImageMount {
            child: ChildGuard::new(child),
            _detach: DetachOnDrop(mnt.to_path_buf()),
        };
        let start = Instant::now();
        while !(fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready in")
            && is_mounted(mnt))
        {
            if start.elapsed() > Duration::from_secs(30) {
                m.child.kill();
                panic!(
                    "mount did not come up: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn stop(&mut self) {
        let status = self.child.terminate(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "mount daemon exit {status:?}"
        );
    }
}

/// Packs the suite's base tree into a dir store; returns (image, store URL).
fn pack_base(tmp: &Path) -> (PathBuf, String) {
    let src = tmp.join("src");
    posix_suite::prepare_base(&src).expect("prepare base");
    let store = format!("dir://{}", tmp.join("store").display());
    let image = tmp.join("image");
    thinnode_ok(&[
        "pack",
        path_str(&src),
        "--store",
        &store,
        "--out",
        path_str(&image),
        "--chunk-size",
        "64KiB",
    ]);
    (image, store)
}

#[test]
fn overlay_over_a_fuse_image_mount_passes_the_posix_suite() {
    if !fuse_available("overlay_over_a_fuse_image_mount_passes_the_posix_suite") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (image, store) = pack_base(tmp.path());
    let lower = tmp.path().join("lower");
    let mut base = ImageMount::start(&image, &lower, &tmp.path().join("cache"));

    let layer_dir = tmp.path().join("layer");
    let layer = OverlayLayer::create(&layer_dir, OverlayOptions::default()).expect("create layer");
    let node = tmp.path().join("node");
    fs::create_dir_all(&node).expect("mkdir");
    layer.mount(&lower, &node).expect("mount overlay over FUSE");
    let detach = DetachOnDrop(node.clone());

    let outcomes = posix_suite::run(&node);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.name)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");

    // `layer du` counts the copied-up and new files; reset is refused while mounted.
    let du: serde_json::Value = serde_json::from_str(&thinnode_ok(&[
        "layer",
        "du",
        path_str(&layer_dir),
        "--json",
    ]))
    .expect("du json");
    assert_eq!(du["kind"], "overlay");
    let allocated = du["allocated_bytes"].as_u64().expect("allocated");
    assert!(allocated > 300_000, "{du}");
    assert_eq!(
        allocated,
        layer.du().expect("du").allocated_bytes,
        "CLI and library disagree"
    );
    let refused = thinnode(&["layer", "reset", path_str(&layer_dir)]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is mounted at"), "{stderr}");

    layer.unmount(&node).expect("unmount overlay");
    drop(detach);
    thinnode_ok(&["layer", "reset", path_str(&layer_dir)]);
    let du: serde_json::Value = serde_json::from_str(&thinnode_ok(&[
        "layer",
        "du",
        path_str(&layer_dir),
        "--json",
    ]))
    .expect("du json");
    assert_eq!(
        (du["files"].as_u64(), du["dirs"].as_u64()),
        (Some(0), Some(1)),
        "{du}"
    );

    // The read-only base shows the original bytes, and the image is intact.
    for name in ["mid.bin", "trunc.bin", "mmap.bin", "punch.bin"] {
        let want = fs::read(tmp.path().join("src/base").join(name)).expect("read src");
        assert_eq!(
            fs::read(lower.join("base").join(name)).expect("read lower"),
            want,
            "{name}"
        );
    }
    base.stop();
    thinnode_ok(&["verify", path_str(&image), "--deep", "--store", &store]);
}

#[test]
fn overlay_copy_up_of_a_base_file_is_whole_file() {
    if !fuse_available("overlay_copy_up_of_a_base_file_is_whole_file") {
        return;
    }
    // The measured limit that motivates the blocks layer: one byte written into a base file copies
    // the whole file into the layer.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (image, _store) = pack_base(tmp.path());
    let lower = tmp.path().join("lower");
    let mut base = ImageMount::start(&image, &lower, &tmp.path().join("cache"));
    let layer_dir = tmp.path().join("layer");
    let layer = OverlayLayer::create(&layer_dir, OverlayOptions::default()).expect("create layer");
    let node = tmp.path().join("node");
    fs::create_dir_all(&node).expect("mkdir");
    layer.mount(&lower, &node).expect("mount overlay");
    let _detach = DetachOnDrop(node.clone());

    // Opening read-write without writing already copies up (ParityDB's pattern).
    drop(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node.join("base/trunc.bin"))
            .expect("open rw"),
    );
    fs::OpenOptions::new()
        .write(true)
        .open(node.join("base/mid.bin"))
        .expect("open")
        .write_all_at(b"!", 5)
        .expect("write");
    let used = layer.du().expect("du");
    assert_eq!(used.files, 2);
    assert_eq!(used.apparent_bytes, 600_000);
    layer.unmount(&node).expect("unmount");
    base.stop();
}

#[test]
fn blocks_layer_over_a_fuse_image_mount_passes_the_posix_suite() {
    if !fuse_available("blocks_layer_over_a_fuse_image_mount_passes_the_posix_suite") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (image, store) = pack_base(tmp.path());
    let lower = tmp.path().join("lower");
    let mut base = ImageMount::start(&image, &lower, &tmp.path().join("cache"));

    let layer_dir = tmp.path().join("layer");
    let layer = BlocksLayer::create(&layer_dir, BlocksOptions::default()).expect("create layer");
    let node = tmp.path().join("node");
    fs::create_dir_all(&node).expect("mkdir");
    let mounted = layer
        .mount(&lower, &node)
        .expect("mount blocks layer over FUSE");
    let detach = DetachOnDrop(node.clone());

    let outcomes = posix_suite::run(&node);
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.name)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");

    let refused = thinnode(&["layer", "reset", path_str(&layer_dir)]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is mounted at"), "{stderr}");
    mounted.unmount().expect("unmount blocks layer");
    drop(detach);

    // `layer du` counts only what the node wrote: the base files it wrote into hold their blocks,
    // not their whole size (the overlay run above copies 300 KB files up whole).
    let du: serde_json::Value = serde_json::from_str(&thinnode_ok(&[
        "layer",
        "du",
        path_str(&layer_dir),
        "--json",
    ]))
    .expect("du json");
    assert_eq!(du["kind"], "blocks");
    let allocated = du["allocated_bytes"].as_u64().expect("allocated");
    assert_eq!(
        allocated,
        layer.du().expect("du").allocated_bytes,
        "CLI and library disagree"
    );
    let mid = fs::metadata(layer_dir.join("tree/base/mid.bin")).expect("stat layer copy");
    assert_eq!(mid.len(), 300_000);
    assert!(
        mid.blocks() * 512 <= 16 * 1024,
        "a 10-byte write into mid.bin left {} bytes in the layer",
        mid.blocks() * 512
    );

    thinnode_ok(&["layer", "reset", path_str(&layer_dir)]);
    let du: serde_json::Value = serde_json::from_str(&thinnode_ok(&[
        "layer",
        "du",
        path_str(&layer_dir),
        "--json",
    ]))
    .expect("du json");
    assert_eq!(du["files"].as_u64(), Some(0), "{du}");

    // The read-only base shows the original bytes, and the image is intact.
    for name in ["mid.bin", "trunc.bin", "mmap.bin", "punch.bin"] {
        let want = fs::read(tmp.path().join("src/base").join(name)).expect("read src");
        assert_eq!(
            fs::read(lower.join("base").join(name)).expect("read lower"),
            want,
            "{name}"
        );
    }
    base.stop();
    thinnode_ok(&["verify", path_str(&image), "--deep", "--store", &store]);
}

#[test]
fn layer_commands_explain_what_they_cannot_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = thinnode(&["layer", "du", path_str(tmp.path())]);
    assert!(!plain.status.success());
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(
        stderr.contains("is not a thinnode layer directory"),
        "{stderr}"
    );

    let future = tmp.path().join("future");
    fs::create_dir_all(&future).expect("mkdir");
    fs::write(
        future.join("layer.json"),
        r#"{"version": 2, "kind": "blocks"}"#,
    )
    .expect("write");
    for cmd in ["du", "reset"] {
        let out = thinnode(&["layer", cmd, path_str(&future)]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("this build reads version 1"),
            "{cmd}: {stderr}"
        );
    }

    fs::write(future.join("layer.json"), "{not json").expect("write");
    let out = thinnode(&["layer", "reset", path_str(&future)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is invalid"));
}
