//! End-to-end test of `thinnode store copy`: an image's chunks move from a dir store to a `route:` store
//! over two `thinnode zdb` servers; the new image records the new store, reads without the old one, is
//! signed when asked, and a second copy skips everything (resumable).

mod common;

use std::fs;
use std::path::Path;

use common::{ok_stdout as ok, run, BIN};
use rand::{RngCore, SeedableRng};
use testkit::ZdbProcess;

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[test]
fn copy_moves_chunks_to_a_new_store_and_rewrites_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let mut data = vec![0u8; 3_000_000];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut data);
    fs::write(src.join("d/data.bin"), &data).unwrap();
    fs::write(src.join("note"), b"copied").unwrap();
    let old_store = tmp.path().join("old-store");
    let image = tmp.path().join("old.tni");
    ok(&[
        "pack",
        p(&src),
        "--store",
        &format!("dir://{}", p(&old_store)),
        "--out",
        p(&image),
        "--chunk-size",
        "128KiB",
        "--label",
        "chain=test",
    ]);

    let servers: Vec<ZdbProcess> = (0..2)
        .map(|i| ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join(format!("zdb{i}")), &[]))
        .collect();
    let target = format!(
        "route: {} {}",
        servers[0].url("default"),
        servers[1].url("default")
    );
    let key = tmp.path().join("k.key");
    ok(&["key", "gen", "--out", p(&key)]);
    let new_image = tmp.path().join("new.tni");
    let first: serde_json::Value = serde_json::from_str(&ok(&[
        "store",
        "copy",
        p(&image),
        "--to",
        &target,
        "--out",
        p(&new_image),
        "--jobs",
        "3",
        "--batch",
        "4",
        "--sign",
        p(&key),
        "--json",
    ]))
    .expect("copy --json");
    let chunks = first["chunks"].as_u64().unwrap();
    assert!(chunks >= 24, "{first}");
    assert_eq!(first["copied"].as_u64(), Some(chunks), "{first}");

    // The new image names the new store, keeps labels, is signed, and reads without the old store.
    fs::remove_dir_all(&old_store).unwrap();
    let inspect = ok(&["inspect", p(&new_image)]);
    assert!(
        inspect.contains("route: 00-ff=zdb://127.0.0.1:"),
        "{inspect}"
    );
    assert!(inspect.contains("chain"), "{inspect}");
    ok(&[
        "verify",
        p(&new_image),
        "--deep",
        "--trust",
        p(&tmp.path().join("k.key.pub")),
    ]);
    let out = tmp.path().join("out");
    ok(&["unpack", p(&new_image), p(&out)]);
    assert_eq!(fs::read(out.join("d/data.bin")).unwrap(), data);
    assert_eq!(fs::read(out.join("note")).unwrap(), b"copied");

    // Resumable: a second copy (from the new image) finds every chunk present and copies nothing.
    let again: serde_json::Value = serde_json::from_str(&ok(&[
        "store",
        "copy",
        p(&new_image),
        "--to",
        &target,
        "--out",
        p(&tmp.path().join("again.tni")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(again["copied"].as_u64(), Some(0), "{again}");
    assert_eq!(again["already_present"].as_u64(), Some(chunks), "{again}");

    // A source that lacks a chunk makes the copy fail, and no image is written.
    let broken = tmp.path().join("broken.tni");
    let empty = format!("dir://{}", p(&tmp.path().join("empty-store")));
    let out = run(&[
        "store",
        "copy",
        p(&image),
        "--from",
        &empty,
        "--to",
        &format!("dir://{}", p(&tmp.path().join("t"))),
        "--out",
        p(&broken),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing from the source"));
    assert!(!broken.exists());
}
