//! Helpers shared by the integration tests: start the real `zdb` binary, talk raw RESP to it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use testkit::ZdbProcess;

/// Path of the server binary under test.
pub fn zdb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zdb")
}

/// Starts our server on a free port with `extra` flags, data under `dir`.
pub fn start(dir: &Path, extra: &[&str]) -> ZdbProcess {
    ZdbProcess::start(&[zdb_bin()], dir, extra)
}

/// A raw RESP connection: sends commands as arrays of bulk strings and decodes each reply with
/// `redis-protocol` (an independent decoder).
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Encodes a request.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

impl Raw {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one reply frame; `None` when the server closed the connection.
    pub fn read_frame(&mut self) -> Option<OwnedFrame> {
        loop {
            if let Some((frame, n)) = decode(&self.buf).expect("server sent invalid RESP") {
                self.buf.drain(..n);
                return Some(frame);
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Sends one command and returns its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> OwnedFrame {
        self.send_raw(&encode(args));
        self.read_frame().expect("connection closed")
    }

    /// `cmd` with text arguments.
    pub fn c(&mut self, args: &[&str]) -> OwnedFrame {
        let v: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd(&v)
    }
}

/// `-msg` frame.
pub fn err(msg: &str) -> OwnedFrame {
    OwnedFrame::Error(msg.to_string())
}

/// `+msg` frame.
pub fn simple(msg: &str) -> OwnedFrame {
    OwnedFrame::SimpleString(msg.as_bytes().to_vec())
}

/// Bulk frame.
pub fn bulk(b: &[u8]) -> OwnedFrame {
    OwnedFrame::BulkString(b.to_vec())
}

/// Integer frame.
pub fn int(i: i64) -> OwnedFrame {
    OwnedFrame::Integer(i)
}

/// Bytes of a bulk frame.
pub fn bytes_of(f: &OwnedFrame) -> Vec<u8> {
    match f {
        OwnedFrame::BulkString(b) => b.clone(),
        other => panic!("expected bulk, got {other:?}"),
    }
}

/// Walks a whole SCAN (or RSCAN) and returns the keys in order.
pub fn scan_all(raw: &mut Raw, command: &str) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let reply = match &cursor {
            None => raw.c(&[command]),
            Some(c) => raw.cmd(&[command.as_bytes(), c]),
        };
        match reply {
            OwnedFrame::Error(e) if e == "No more data" => return keys,
            OwnedFrame::Array(parts) => {
                assert_eq!(parts.len(), 2, "scan reply shape");
                cursor = Some(bytes_of(&parts[0]));
                let OwnedFrame::Array(entries) = &parts[1] else {
                    panic!("entries not an array")
                };
                for e in entries {
                    let OwnedFrame::Array(f) = e else {
                        panic!("entry not an array")
                    };
                    assert_eq!(f.len(), 3);
                    assert!(matches!(f[1], OwnedFrame::Integer(_)));
                    assert!(matches!(f[2], OwnedFrame::Integer(_)));
                    keys.push(bytes_of(&f[0]));
                }
            }
            other => panic!("unexpected scan reply {other:?}"),
        }
    }
}

/// A server started by the test with its stderr captured in a file (to check log lines).
pub struct Logged {
    pub child: testkit::ChildGuard,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Logged {
    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts the binary with `--data dir/data --index dir/index` on a port it picks itself (`--port 0`),
/// stderr to `dir/<name>.log`; the port is read from the server's own "listening on" line, so the test
/// can never reach another test's server.
pub fn start_logged(dir: &Path, name: &str, extra: &[&str]) -> Logged {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(zdb_bin())
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--index")
        .arg(dir.join("index"))
        .args(["--listen", "127.0.0.1", "--port", "0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let mut child = testkit::ChildGuard::new(child);
    let start = std::time::Instant::now();
    let port = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(port) = text.lines().find_map(|l| {
            l.split_once("listening on 127.0.0.1:")
                .and_then(|(_, p)| p.trim().parse::<u16>().ok())
        }) {
            break port;
        }
        if let Some(status) = child.try_wait() {
            panic!("zdb server exited ({status}) before listening:\n{text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "zdb server did not listen within 20 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    testkit::wait_for_tcp(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    Logged { child, port, log }
}
