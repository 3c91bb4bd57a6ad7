//! The library API (in-process server, port 0) and the unix socket transport.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

#[test]
fn start_background_on_ephemeral_port_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let args = zdb::ServerArgs::for_dirs(dir.path().join("data"), dir.path().join("index"));
    assert_eq!(args.port, 0);
    let server = zdb::start_background(args.clone()).unwrap();
    let addr = server.tcp_addr().expect("tcp address");
    assert_ne!(addr.port(), 0);
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let mut con = client.get_connection().unwrap();
    let k: Vec<u8> = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    assert_eq!(k, b"k");
    drop(con);
    server.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );

    // Same directories again: the data is there.
    let server = zdb::start_background(args).unwrap();
    let client = redis::Client::open(format!("redis://{}/", server.tcp_addr().unwrap())).unwrap();
    let mut con = client.get_connection().unwrap();
    let v: Vec<u8> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, b"v");
    server.stop();
}

#[test]
fn start_background_reports_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = zdb::ServerArgs::for_dirs(dir.path().join("data"), dir.path().join("index"));
    args.protect = true;
    assert!(
        zdb::start_background(args).is_err(),
        "--protect without --admin must fail"
    );
}

#[test]
fn ipv6_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = zdb::ServerArgs::for_dirs(dir.path().join("data"), dir.path().join("index"));
    args.listen = "::1".into();
    let server = match zdb::start_background(args) {
        Ok(s) => s,
        Err(e) => {
            // Hosts without IPv6 loopback cannot run this.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "IPv6 unavailable under CI: {e}"
            );
            eprintln!("SKIP ipv6_listen_address: {e}");
            return;
        }
    };
    let addr = server.tcp_addr().unwrap();
    assert!(addr.is_ipv6());
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
    server.stop();
}

#[test]
fn unix_socket_with_the_binary_and_redis_crate() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("zdb.sock");
    let child = std::process::Command::new(zdb_bin())
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--index")
        .arg(dir.path().join("index"))
        .arg("--socket")
        .arg(&sock)
        .spawn()
        .unwrap();
    let _guard = testkit::ChildGuard::new(child);
    let start = std::time::Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "unix socket never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Raw bytes.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&encode(&[b"SET", b"u", b"x"])).unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"$1\r\nu\r\n");
    // The redis crate over the socket.
    let client = redis::Client::open(format!("redis+unix://{}", sock.display())).unwrap();
    let mut con = client.get_connection().unwrap();
    let v: Vec<u8> = redis::cmd("GET").arg("u").query(&mut con).unwrap();
    assert_eq!(v, b"x");
    let e = redis::cmd("BOGUS").query::<()>(&mut con).unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

#[test]
fn single_dash_flags_like_0db() {
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let child = std::process::Command::new(zdb_bin())
        .arg("-data")
        .arg(dir.path().join("data"))
        .arg("-index")
        .arg(dir.path().join("index"))
        .args(["-port", &port.to_string(), "-mode", "seq"])
        .spawn()
        .unwrap();
    let _guard = testkit::ChildGuard::new(child);
    testkit::wait_for_tcp(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    let mut r = Raw::connect(port);
    assert_eq!(r.cmd(&[b"SET", b"", b"v"]), bulk(&0u64.to_le_bytes()));
}
