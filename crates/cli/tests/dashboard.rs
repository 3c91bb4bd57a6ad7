//! The Grafana dashboard `dist/grafana/thinnode.json` against the real exporters: every metric a panel
//! queries must be served by a live `thinnode mount --metrics` or `thinnode zdb --metrics` (after a
//! read through the mount, so every series has had a chance to appear).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok_text, BIN};
use testkit::{free_port, fuse_available, ChildGuard, ZdbProcess};

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    body.to_string()
}

/// Sample names in a Prometheus text exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `thinnode_…` metric name in the dashboard's queries.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(e) = map.get("expr").and_then(|e| e.as_str()) {
                    exprs.push(e.to_string());
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("thinnode_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn every_dashboard_metric_is_served_by_a_live_exporter() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/grafana/thinnode.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has queries",
            p["title"]
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
    let wanted = dashboard_metrics(&dashboard);
    assert!(wanted.iter().any(|m| m.starts_with("thinnode_mount_")));
    assert!(wanted.iter().any(|m| m.starts_with("thinnode_zdb_")));
    if !fuse_available("every_dashboard_metric_is_served_by_a_live_exporter") {
        return;
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let zdb_metrics = format!("127.0.0.1:{}", free_port());
    let zdb = ZdbProcess::start(
        &[BIN, "zdb"],
        &tmp.path().join("zdb"),
        &["--metrics", &zdb_metrics],
    );
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("f"), vec![7u8; 3 << 20]).expect("write");
    let img = tmp.path().join("x.img");
    ok_text(&[
        "pack",
        data.to_str().expect("utf-8"),
        "--store",
        &zdb.url("default"),
        "--out",
        img.to_str().expect("utf-8"),
    ]);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mount_metrics = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .args([
            "mount",
            img.to_str().expect("utf-8"),
            mnt.to_str().expect("utf-8"),
            "--cache",
            tmp.path().join("cache").to_str().expect("utf-8"),
            "--metrics",
            &mount_metrics,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mount");
    let _mount = ChildGuard::new(child);
    let start = Instant::now();
    while std::fs::read(mnt.join("f")).map(|b| b.len()).ok() != Some(3 << 20) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the mount answers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut served = sample_names(&scrape(&mount_metrics));
    served.extend(sample_names(&scrape(&zdb_metrics)));
    let missing: Vec<&String> = wanted.iter().filter(|m| !served.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no exporter serves: {missing:?}\nserved: {served:?}"
    );
    ok_text(&["umount", mnt.to_str().expect("utf-8")]);
}
