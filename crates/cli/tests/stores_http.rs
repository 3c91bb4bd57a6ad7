//! End-to-end tests of `thinnode serve-store` and the read-only `http://` store: an image packed into a
//! dir store is unpacked and deep-verified over HTTP from our server, headers are checked on the wire,
//! and writes to an HTTP store are refused.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ok_text as ok, run, text, BIN};
use rand::{RngCore, SeedableRng};
use testkit::ChildGuard;

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// One raw HTTP/1.1 request; returns the status line + headers and the body.
fn http(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    (
        String::from_utf8_lossy(&raw[..split]).to_lowercase(),
        raw[split + 4..].to_vec(),
    )
}

#[test]
fn serve_store_feeds_an_http_store_with_caching_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let mut data = vec![0u8; 900_000];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data);
    fs::write(src.join("d/data.bin"), &data).unwrap();
    fs::write(src.join("small.txt"), b"hello over http\n").unwrap();
    let chunks = tmp.path().join("chunks");
    let image = tmp.path().join("image.tni");
    ok(&[
        "pack",
        p(&src),
        "--store",
        &format!("dir://{}", p(&chunks)),
        "--out",
        p(&image),
        "--chunk-size",
        "128KiB",
    ]);

    let port = testkit::free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(BIN)
        .args(["serve-store", p(&chunks), "--listen", &addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve-store");
    let mut server = ChildGuard::new(child);
    testkit::wait_for_tcp(addr, Duration::from_secs(20));
    let base = format!("http://{addr}/");

    let out = tmp.path().join("out");
    ok(&["unpack", p(&image), p(&out), "--store", &base]);
    assert_eq!(fs::read(out.join("d/data.bin")).unwrap(), data);
    assert_eq!(
        fs::read(out.join("small.txt")).unwrap(),
        b"hello over http\n"
    );
    let verify = ok(&["verify", p(&image), "--deep", "--store", &base]);
    assert!(!verify.to_lowercase().contains("missing"), "{verify}");

    // The wire: one object with its headers, a conditional GET, HEAD, a missing object, a bad method.
    let (fan_out, name) = fs::read_dir(&chunks)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().unwrap().is_dir())
        .find_map(|d| {
            let file = fs::read_dir(d.path())
                .unwrap()
                .filter_map(Result::ok)
                .find(|f| f.file_name().len() == 64)?;
            Some((
                d.file_name().into_string().unwrap(),
                file.file_name().into_string().unwrap(),
            ))
        })
        .expect("a stored object");
    let stored = fs::read(chunks.join(&fan_out).join(&name)).unwrap();
    let path = format!("/{fan_out}/{name}");
    let (head, body) = http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("cache-control: public, max-age=31536000, immutable"),
        "{head}"
    );
    assert!(head.contains(&format!("etag: \"{name}\"")), "{head}");
    assert!(
        body == stored,
        "range-free: the whole object, not chunked ({} bytes)",
        body.len()
    );
    let (head, body) = http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"{name}\"\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("http/1.1 304"), "{head}");
    assert!(body.is_empty());
    let missing = format!("/00/00{}", "0".repeat(62));
    let (head, _) = http(
        addr,
        &format!("GET {missing} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("http/1.1 404"), "{head}");
    let (head, _) = http(
        addr,
        &format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(head.starts_with("http/1.1 405"), "{head}");
    let (head, _) = http(
        addr,
        "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // HTTP stores are read-only.
    let refused = run(&[
        "pack",
        p(&src),
        "--store",
        &base,
        "--out",
        p(&tmp.path().join("x.tni")),
    ]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("read-only"), "{}", text(&refused));

    // A router whose first replica is a dead HTTP server fails over to the live one.
    let dead = format!("http://127.0.0.1:{}/?timeout_ms=2000", testkit::free_port());
    let routed = format!("route: {dead} {base}");
    let out2 = tmp.path().join("out2");
    ok(&["unpack", p(&image), p(&out2), "--store", &routed]);
    assert_eq!(fs::read(out2.join("d/data.bin")).unwrap(), data);

    server.kill();
}
