//! The POSIX suite on a plain directory (reference) and on real kernel overlayfs mounts made by
//! `OverlayLayer` over a plain lower directory; du, reset and mount errors of overlay layers.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use layer::{Error, OverlayLayer, OverlayOptions};
use layer_testkit::posix_suite::{self, Outcome};
use testkit::fuse_available;

/// Detaches whatever is mounted at the path when dropped.
struct DetachOnDrop(PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn report(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}\n", o.name))
        })
        .collect()
}

/// Lower tree with the suite's base, an overlay layer and a mount target; returns (layer, target, guard).
fn mounted_overlay(
    tmp: &Path,
    options: OverlayOptions,
) -> (OverlayLayer, PathBuf, PathBuf, DetachOnDrop) {
    let lower = tmp.join("lower");
    posix_suite::prepare_base(&lower).expect("prepare base");
    let target = tmp.join("mnt");
    fs::create_dir_all(&target).expect("mkdir");
    let layer = OverlayLayer::create(&tmp.join("layer"), options).expect("create layer");
    layer.mount(&lower, &target).expect("mount overlay");
    let guard = DetachOnDrop(target.clone());
    (layer, target, lower, guard)
}

#[test]
fn plain_directory_passes_every_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    posix_suite::prepare_base(tmp.path()).expect("prepare base");
    let outcomes = posix_suite::run(tmp.path());
    assert_eq!(outcomes.len(), posix_suite::checks().len());
    assert!(
        posix_suite::failed(&outcomes).is_empty(),
        "{}",
        report(&outcomes)
    );
}

#[test]
fn suite_detects_a_broken_directory() {
    // The base tree is missing: every base check must fail, every fresh check must pass.
    let tmp = tempfile::tempdir().expect("tempdir");
    let outcomes = posix_suite::run(tmp.path());
    let failed = posix_suite::failed(&outcomes);
    let base: Vec<_> = posix_suite::checks()
        .iter()
        .filter(|c| c.uses_base)
        .map(|c| c.name)
        .collect();
    assert_eq!(failed, base);
}

#[test]
fn overlay_with_default_options_passes_every_check() {
    if !fuse_available("overlay_with_default_options_passes_every_check") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layer, target, lower, _guard) = mounted_overlay(tmp.path(), OverlayOptions::default());
    let outcomes = posix_suite::run(&target);
    assert!(
        posix_suite::failed(&outcomes).is_empty(),
        "{}",
        report(&outcomes)
    );
    assert_eq!(
        layer.mount_points().expect("mountinfo"),
        vec![target.clone()]
    );
    layer.unmount(&target).expect("unmount");
    // The lower is untouched whatever the suite did.
    let pristine = tmp.path().join("pristine");
    posix_suite::prepare_base(&pristine).expect("prepare");
    for entry in fs::read_dir(pristine.join("base")).expect("readdir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            let name = entry.file_name();
            assert_eq!(
                fs::read(lower.join("base").join(&name)).expect("read lower"),
                fs::read(entry.path()).expect("read pristine"),
                "{name:?}"
            );
        }
    }
}

#[test]
fn overlay_without_redirect_dir_cannot_rename_base_directories() {
    if !fuse_available("overlay_without_redirect_dir_cannot_rename_base_directories") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = OverlayOptions {
        redirect_dir: false,
        metacopy: false,
        index: false,
    };
    let (_layer, target, _lower, _guard) = mounted_overlay(tmp.path(), options);
    let outcomes = posix_suite::run(&target);
    assert_eq!(
        posix_suite::failed(&outcomes),
        vec!["base_rename_dir"],
        "{}",
        report(&outcomes)
    );
}

#[test]
fn metacopy_keeps_chmod_of_a_base_file_small() {
    if !fuse_available("metacopy_keeps_chmod_of_a_base_file_small") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let lower = tmp.path().join("lower");
    fs::create_dir_all(&lower).expect("mkdir");
    fs::write(lower.join("big"), posix_suite::pattern(1, 8 << 20)).expect("write");
    let mut used = Vec::new();
    for metacopy in [false, true] {
        let target = tmp.path().join(format!("mnt-{metacopy}"));
        fs::create_dir_all(&target).expect("mkdir");
        let options = OverlayOptions {
            metacopy,
            ..OverlayOptions::default()
        };
        let layer = OverlayLayer::create(&tmp.path().join(format!("layer-{metacopy}")), options)
            .expect("create");
        layer.mount(&lower, &target).expect("mount");
        let _guard = DetachOnDrop(target.clone());
        fs::set_permissions(
            target.join("big"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        used.push(layer.du().expect("du").allocated_bytes);
        layer.unmount(&target).expect("unmount");
    }
    assert!(used[0] >= 8 << 20, "metacopy=off copied {} bytes", used[0]);
    assert!(used[1] < 1 << 20, "metacopy=on copied {} bytes", used[1]);
}

#[test]
fn du_counts_allocated_bytes_and_reset_refuses_while_mounted() {
    if !fuse_available("du_counts_allocated_bytes_and_reset_refuses_while_mounted") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layer, target, _lower, _guard) = mounted_overlay(tmp.path(), OverlayOptions::default());
    let empty = layer.du().expect("du");
    assert_eq!((empty.files, empty.apparent_bytes), (0, 0));
    // A sparse file: 1 GiB apparent, one 4 KiB block written.
    let sparse = fs::File::create(target.join("sparse")).expect("create");
    sparse.set_len(1 << 30).expect("set_len");
    sparse.write_all_at(&[1u8; 4096], 1 << 20).expect("write");
    sparse.sync_all().expect("fsync");
    drop(sparse);
    // A base file written in the middle is copied up whole by overlayfs.
    fs::OpenOptions::new()
        .write(true)
        .open(target.join("base/mid.bin"))
        .expect("open")
        .write_all_at(b"x", 10)
        .expect("write");
    let used = layer.du().expect("du");
    assert_eq!(used.files, 2);
    assert_eq!(used.apparent_bytes, (1 << 30) + 300_000);
    assert!(
        used.allocated_bytes >= 300_000 + 4096 && used.allocated_bytes < 2 << 20,
        "{used:?}"
    );
    assert_eq!(layer::du(layer.dir()).expect("du by dir"), used);

    match layer::reset(layer.dir()) {
        Err(Error::Mounted { mounts, .. }) => assert_eq!(mounts, vec![target.clone()]),
        other => panic!("reset while mounted gave {other:?}"),
    }
    layer.unmount(&target).expect("unmount");
    layer::reset(layer.dir()).expect("reset");
    let after = layer.du().expect("du");
    assert_eq!((after.files, after.dirs, after.others), (0, 1, 0));
    // The layer still mounts after a reset and shows the pristine base.
    layer
        .mount(&tmp.path().join("lower"), &target)
        .expect("remount");
    assert!(!target.join("sparse").exists());
    assert_eq!(
        fs::read(target.join("base/mid.bin")).expect("read"),
        posix_suite::pattern(2, 300_000)
    );
    layer.unmount(&target).expect("unmount");
}

#[test]
fn layer_survives_remount() {
    if !fuse_available("layer_survives_remount") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layer, target, lower, _guard) = mounted_overlay(tmp.path(), OverlayOptions::default());
    fs::rename(target.join("base/dir"), target.join("base/moved")).expect("rename");
    fs::write(target.join("new"), b"kept").expect("write");
    layer.unmount(&target).expect("unmount");
    let reopened = OverlayLayer::open(layer.dir()).expect("open");
    assert_eq!(reopened.options(), &OverlayOptions::default());
    reopened.mount(&lower, &target).expect("remount");
    assert_eq!(fs::read(target.join("new")).expect("read"), b"kept");
    assert!(!target.join("base/dir").exists());
    assert_eq!(
        fs::read(target.join("base/moved/sub/y.bin")).expect("read"),
        posix_suite::pattern(8, 20_000)
    );
    reopened.unmount(&target).expect("unmount");
}

#[test]
fn mount_errors_are_explained() {
    if !fuse_available("mount_errors_are_explained") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let lower = tmp.path().join("lower");
    fs::create_dir_all(&lower).expect("mkdir");
    let target = tmp.path().join("mnt");
    fs::create_dir_all(&target).expect("mkdir");
    let layer =
        OverlayLayer::create(&tmp.path().join("layer"), OverlayOptions::default()).expect("create");

    let file = tmp.path().join("file");
    fs::write(&file, b"x").expect("write");
    let err = layer.mount(&file, &target).expect_err("lower is a file");
    assert!(err.to_string().contains("is not a directory"), "{err}");

    let err = layer
        .mount(&tmp.path().join("missing"), &target)
        .expect_err("missing lower");
    assert!(err.to_string().contains("resolve lower dir"), "{err}");

    // An upper dir on overlayfs is refused with the reason.
    layer.mount(&lower, &target).expect("mount");
    let _guard = DetachOnDrop(target.clone());
    let nested = OverlayLayer::create(&target.join("nested"), OverlayOptions::default())
        .expect("create nested");
    let target2 = tmp.path().join("mnt2");
    fs::create_dir_all(&target2).expect("mkdir");
    let lower2 = tmp.path().join("lower2");
    fs::create_dir_all(&lower2).expect("mkdir");
    let err = nested
        .mount(&lower2, &target2)
        .expect_err("upper on overlay");
    assert!(err.to_string().contains("is on overlayfs"), "{err}");

    // The same upper dir cannot serve two overlay mounts at once (the kernel only warns with index=off).
    let target3 = tmp.path().join("mnt3");
    fs::create_dir_all(&target3).expect("mkdir");
    let result = layer.mount(&lower2, &target3);
    let _guard3 = DetachOnDrop(target3.clone());
    match result {
        Err(Error::Mounted { mounts, .. }) => assert_eq!(mounts, vec![target.clone()]),
        other => panic!("second mount of one layer gave {other:?}"),
    }

    // Opening a directory that is not a layer, or creating over an existing layer, is refused.
    assert!(matches!(
        OverlayLayer::open(&lower),
        Err(Error::NotALayer(_))
    ));
    assert!(OverlayLayer::create(layer.dir(), OverlayOptions::default()).is_err());
    layer.unmount(&target).expect("unmount");
    let err = layer.unmount(&target).expect_err("not mounted");
    assert!(err.to_string().contains("is not a mount of layer"), "{err}");
}
