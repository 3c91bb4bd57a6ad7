//! `--metrics ADDR`: the Prometheus text a live server serves, checked against the traffic sent to it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// One HTTP GET of `path` on `addr`; the response body.
fn scrape(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain"), "{head}");
    body.to_string()
}

/// The value of the sample named exactly `series` (name and labels as printed).
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
}

#[test]
fn metrics_count_what_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    let z = start_logged(
        dir.path(),
        "metrics",
        &["--metrics", "127.0.0.1:0", "--threads", "2"],
    );
    let addr = z
        .log_text()
        .lines()
        .find_map(|l| {
            l.split_once("metrics on http://")
                .map(|(_, a)| a.trim_end_matches("/metrics").trim().to_string())
        })
        .expect("the server logs its metrics address");

    let before = scrape(&addr, "/metrics");
    for name in ["GET", "SET", "NSNEW", "WAIT", "UNKNOWN"] {
        assert_eq!(
            value(
                &before,
                &format!("thinnode_zdb_commands_total{{command=\"{name}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(
        value(
            &before,
            "thinnode_zdb_namespace_keys{namespace=\"default\"}"
        ),
        0.0
    );

    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["SET", "k", "hello"]), bulk(b"k"));
    assert_eq!(r.c(&["GET", "k"]), bulk(b"hello"));
    assert_eq!(
        r.c(&["GET", "missing"]),
        redis_protocol::resp2::types::OwnedFrame::Null
    );
    assert_eq!(r.c(&["DEL", "missing"]), err("Key not found"));
    assert_eq!(r.c(&["BOGUS"]), err("Command not supported"));
    assert_eq!(r.c(&["NSNEW", "second"]), simple("OK"));
    // Pipelined SETs are counted one by one.
    r.send_raw(
        &[
            encode(&[b"SET", b"a", b"1"]),
            encode(&[b"SET", b"b", b"22"]),
        ]
        .concat(),
    );
    assert_eq!(r.read_frame(), Some(bulk(b"a")));
    assert_eq!(r.read_frame(), Some(bulk(b"b")));
    let mut bad = Raw::connect(z.port);
    bad.send_raw(b"NOT RESP\r\n");
    assert!(matches!(
        bad.read_frame(),
        Some(redis_protocol::resp2::types::OwnedFrame::Error(_))
    ));
    assert_eq!(
        bad.read_frame(),
        None,
        "a malformed stream closes the connection"
    );

    let m = scrape(&addr, "/anything");
    let series = |name: &str, labels: &str| format!("thinnode_zdb_{name}{{{labels}}}");
    assert_eq!(value(&m, &series("commands_total", "command=\"SET\"")), 3.0);
    assert_eq!(value(&m, &series("commands_total", "command=\"GET\"")), 2.0);
    assert_eq!(value(&m, &series("commands_total", "command=\"DEL\"")), 1.0);
    assert_eq!(
        value(&m, &series("commands_total", "command=\"UNKNOWN\"")),
        1.0
    );
    assert_eq!(
        value(&m, &series("command_errors_total", "command=\"DEL\"")),
        1.0
    );
    assert_eq!(
        value(&m, &series("command_errors_total", "command=\"GET\"")),
        0.0
    );
    assert_eq!(
        value(&m, &series("command_errors_total", "command=\"UNKNOWN\"")),
        1.0
    );
    assert_eq!(value(&m, "thinnode_zdb_protocol_errors_total"), 1.0);
    // The start-up probe's connection, `r` and `bad`.
    assert_eq!(value(&m, "thinnode_zdb_connections_accepted_total"), 3.0);
    assert_eq!(value(&m, "thinnode_zdb_connections_open"), 1.0);
    assert!(value(&m, "thinnode_zdb_received_bytes_total") > 100.0);
    assert!(value(&m, "thinnode_zdb_sent_bytes_total") > 20.0);
    assert_eq!(
        value(
            &m,
            &series("request_duration_seconds_count", "command=\"GET\"")
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            &series(
                "request_duration_seconds_bucket",
                "le=\"+Inf\",command=\"GET\""
            )
        ),
        2.0
    );
    assert!(
        value(
            &m,
            &series("request_duration_seconds_sum", "command=\"SET\"")
        ) > 0.0
    );
    assert_eq!(
        value(&m, &series("namespace_keys", "namespace=\"default\"")),
        3.0
    );
    assert_eq!(
        value(&m, &series("namespace_keys", "namespace=\"second\"")),
        0.0
    );
    assert_eq!(
        value(&m, &series("namespace_data_bytes", "namespace=\"default\"")),
        8.0
    );
    assert!(
        value(
            &m,
            &series("namespace_index_memory_bytes", "namespace=\"default\"")
        ) > 0.0
    );
    // INFO reads the same counters.
    let info = String::from_utf8(bytes_of(&r.c(&["INFO"]))).unwrap();
    assert!(info.contains("commands_unknown: 1"), "{info}");
}

#[test]
fn in_process_server_reports_its_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = zdb::ServerArgs::for_dirs(dir.path().join("data"), dir.path().join("index"));
    args.metrics = Some("127.0.0.1:0".parse().unwrap());
    args.threads = Some(1);
    let server = zdb::start_background(args).unwrap();
    let addr = server.metrics_addr().expect("metrics address");
    assert_ne!(addr.port(), 0);
    let body = scrape(&addr.to_string(), "/metrics");
    assert!(body.contains("thinnode_zdb_connections_open 0"), "{body}");
    server.stop();
}
