//! End-to-end tests of the `s3://` store on a real S3 engine (SeaweedFS `weed mini` on loopback, started
//! and killed by the test): pack a tree to a bucket with credentials from the environment, deep-verify,
//! mount it through FUSE and compare every byte, and `store copy` an image from a zdb store to S3. The
//! credentials never reach the image or the output.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{text, BIN};
use rand::{RngCore, SeedableRng};
use testkit::{SeaweedProcess, ZdbProcess};

const BUCKET: &str = "thinnode-images";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Runs `thinnode ARGS` with the S3 server's credentials in the standard AWS environment variables
/// (and none inherited from the caller).
fn run_with_credentials(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(SeaweedProcess::credentials_env())
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .expect("run thinnode")
}

/// Like [`run_with_credentials`], but the command must succeed; returns stdout and stderr.
fn ok(args: &[&str]) -> String {
    let out = run_with_credentials(args);
    let all = text(&out);
    assert!(out.status.success(), "thinnode {args:?} failed:\n{all}");
    assert_no_secret(&all);
    all
}

fn assert_no_secret(output: &str) {
    for secret in [SeaweedProcess::ACCESS_KEY, SeaweedProcess::SECRET_KEY] {
        assert!(!output.contains(secret), "a credential leaked:\n{output}");
    }
}

/// Files of every shape the packer handles: multi-chunk random data, a small file, an empty file, a
/// mostly-zero (sparse) file, nested directories.
fn make_tree(root: &Path) -> Vec<PathBuf> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    fs::create_dir_all(root.join("db/sub")).unwrap();
    let mut files = Vec::new();
    for (name, len) in [
        ("db/a.bin", 2_300_000usize),
        ("db/sub/b.bin", 650_000),
        ("c.txt", 5),
    ] {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        fs::write(root.join(name), data).unwrap();
        files.push(PathBuf::from(name));
    }
    fs::write(root.join("db/empty"), b"").unwrap();
    let mut zeros = vec![0u8; 900_000];
    zeros[450_000] = 9;
    fs::write(root.join("db/mostly-zero"), zeros).unwrap();
    files.push(PathBuf::from("db/empty"));
    files.push(PathBuf::from("db/mostly-zero"));
    files
}

fn assert_same_files(files: &[PathBuf], a: &Path, b: &Path) {
    for name in files {
        let left = fs::read(a.join(name)).unwrap();
        let right = fs::read(b.join(name)).unwrap();
        assert!(left == right, "{} differs", name.display());
    }
}

#[test]
fn pack_verify_mount_and_copy_through_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(server) = SeaweedProcess::start(
        "pack_verify_mount_and_copy_through_s3",
        &tmp.path().join("weed"),
        &[BUCKET],
    ) else {
        return;
    };
    let src = tmp.path().join("src");
    let files = make_tree(&src);

    // Pack to the bucket; credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    let url = server.url(BUCKET, "node-a");
    let image = tmp.path().join("image.tni");
    ok(&[
        "pack",
        p(&src),
        "--store",
        &url,
        "--out",
        p(&image),
        "--chunk-size",
        "256KiB",
    ]);
    let inspect = ok(&["inspect", p(&image)]);
    assert!(
        inspect.contains("s3://thinnode-images/node-a?endpoint="),
        "{inspect}"
    );

    // The image records where the chunks are, and nothing secret, even when the URL carried the keys.
    let keyed_image = tmp.path().join("keyed.tni");
    let keyed_url = format!(
        "{}{}",
        server.url(BUCKET, "node-b"),
        SeaweedProcess::credentials_query()
    );
    let packed = ok(&[
        "pack",
        p(&src),
        "--store",
        &keyed_url,
        "--out",
        p(&keyed_image),
    ]);
    assert_no_secret(&packed);
    let recorded = String::from_utf8_lossy(&fs::read(&keyed_image).unwrap()).into_owned();
    assert_no_secret(&recorded);
    assert_no_secret(&ok(&["inspect", p(&keyed_image)]));

    // Deep verification fetches every chunk from the recorded s3:// URL.
    let verify = ok(&["verify", p(&image), "--deep"]);
    assert!(!verify.to_lowercase().contains("missing"), "{verify}");

    // Without credentials the store refuses, and the error names the bucket.
    let refused = Command::new(BIN)
        .args(["verify", p(&image), "--deep"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(text(&refused).contains(BUCKET), "{}", text(&refused));

    // A restore the classic way.
    let out = tmp.path().join("out");
    ok(&["unpack", p(&image), p(&out)]);
    assert_same_files(&files, &src, &out);

    // The lazy FUSE mount reads every byte from S3.
    if testkit::fuse_available("mount from an s3:// store") {
        let mnt = tmp.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        ok(&[
            "mount",
            p(&image),
            p(&mnt),
            "--cache",
            p(&tmp.path().join("cache")),
            "--daemon",
            "--log",
            p(&tmp.path().join("mount.log")),
        ]);
        let read = std::panic::catch_unwind(|| assert_same_files(&files, &src, &mnt));
        ok(&["umount", p(&mnt)]);
        if let Err(e) = read {
            std::panic::resume_unwind(e);
        }
        let log = fs::read_to_string(tmp.path().join("mount.log")).unwrap_or_default();
        assert_no_secret(&log);

        // `mount --store` with the keys in the URL, nothing in the environment.
        let keyed_mnt = tmp.path().join("keyed-mnt");
        fs::create_dir_all(&keyed_mnt).unwrap();
        let keyed_log = tmp.path().join("keyed-mount.log");
        let mounted = Command::new(BIN)
            .args([
                "mount",
                p(&keyed_image),
                p(&keyed_mnt),
                "--store",
                &keyed_url,
                "--cache",
                p(&tmp.path().join("keyed-cache")),
                "--daemon",
                "--log",
                p(&keyed_log),
            ])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        assert!(mounted.status.success(), "{}", text(&mounted));
        let read = std::panic::catch_unwind(|| assert_same_files(&files, &src, &keyed_mnt));
        ok(&["umount", p(&keyed_mnt)]);
        if let Err(e) = read {
            std::panic::resume_unwind(e);
        }
        assert_no_secret(&text(&mounted));
        assert_no_secret(&fs::read_to_string(&keyed_log).unwrap_or_default());
    }

    // store copy: an image in a zdb store moves to S3 and reads from there alone.
    let zdb = ZdbProcess::start(&[BIN, "zdb"], &tmp.path().join("zdb"), &[]);
    let zdb_image = tmp.path().join("zdb.tni");
    ok(&[
        "pack",
        p(&src),
        "--store",
        &zdb.url("default"),
        "--out",
        p(&zdb_image),
        "--chunk-size",
        "128KiB",
    ]);
    let copied_image = tmp.path().join("copied.tni");
    let copied: serde_json::Value = {
        let out = run_with_credentials(&[
            "store",
            "copy",
            p(&zdb_image),
            "--to",
            &server.url(BUCKET, "copied"),
            "--out",
            p(&copied_image),
            "--json",
        ]);
        assert!(out.status.success(), "store copy failed:\n{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("store copy --json")
    };
    let chunks = copied["chunks"].as_u64().unwrap();
    assert!(chunks > 0, "{copied}");
    assert_eq!(copied["copied"].as_u64(), Some(chunks), "{copied}");
    drop(zdb); // the copy must read without the old store
    ok(&["verify", p(&copied_image), "--deep"]);
    let out2 = tmp.path().join("out2");
    ok(&["unpack", p(&copied_image), p(&out2)]);
    assert_same_files(&files, &src, &out2);
    drop(server);
}
