//! Namespaces, permissions, authentication, modes and WAIT, against the real binary.

mod common;

use common::*;
use redis_protocol::resp2::types::OwnedFrame;
use sha1::{Digest, Sha1};

fn sha1_hex(s: &str) -> String {
    hex::encode(Sha1::digest(s.as_bytes()))
}

fn challenge(r: &mut Raw) -> String {
    match r.c(&["AUTH", "SECURE", "CHALLENGE"]) {
        OwnedFrame::SimpleString(s) => String::from_utf8(s).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn namespace_lifecycle_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);

    assert_eq!(r.c(&["NSLIST"]), OwnedFrame::Array(vec![bulk(b"default")]));
    assert_eq!(r.c(&["NSNEW", "ns1"]), simple("OK"));
    assert_eq!(
        r.c(&["NSNEW", "ns1"]),
        err("This namespace is not available")
    );
    assert_eq!(r.c(&["NSNEW", "../x"]), err("This name is not allowed"));
    assert_eq!(r.c(&["NSNEW", &"n".repeat(129)]), err("Namespace too long"));
    assert_eq!(
        r.c(&["NSLIST"]),
        OwnedFrame::Array(vec![bulk(b"default"), bulk(b"ns1")])
    );
    assert_eq!(r.c(&["SELECT", "nope"]), err("Namespace not found"));
    assert_eq!(r.c(&["SELECT"]), err("Invalid argument"));
    assert_eq!(r.c(&["SELECT", "ns1"]), simple("OK"));
    assert_eq!(r.c(&["SET", "a", "1"]), bulk(b"a"));
    assert_eq!(r.c(&["DBSIZE"]), int(1));
    let info = String::from_utf8(bytes_of(&r.c(&["NSINFO", "ns1"]))).unwrap();
    for line in [
        "name: ns1",
        "entries: 1",
        "public: yes",
        "password: no",
        "data_size_bytes: 1",
        "mode: userkey",
    ] {
        assert!(info.contains(line), "missing {line:?} in {info}");
    }
    assert_eq!(r.c(&["NSINFO", "nope"]), err("Namespace not found"));

    // NSSET properties.
    assert_eq!(
        r.c(&["NSSET", "default", "maxsize", "1"]),
        err("Cannot update default namespace")
    );
    assert_eq!(
        r.c(&["NSSET", "nope", "maxsize", "1"]),
        err("Namespace not found")
    );
    assert_eq!(
        r.c(&["NSSET", "ns1", "bogus", "1"]),
        err("Invalid property")
    );
    assert_eq!(r.c(&["NSSET", "ns1", "maxsize", "10"]), simple("OK"));
    assert_eq!(
        r.c(&["SET", "b", "123456789"]),
        bulk(b"b"),
        "1 + 9 = 10 bytes fits"
    );
    assert_eq!(
        r.c(&["SET", "c", "x"]),
        err("No space left on this namespace")
    );
    assert_eq!(
        r.c(&["SET", "b", "12345678"]),
        bulk(b"b"),
        "shrinking an existing key is allowed"
    );
    assert_eq!(r.c(&["NSSET", "ns1", "maxsize", "0"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "ns1", "worm", "1"]), simple("OK"));
    assert_eq!(
        r.c(&["SET", "a", "2"]),
        err("Namespace is protected by worm mode")
    );
    assert_eq!(
        r.c(&["DEL", "a"]),
        err("Cannot delete a key when namespace is in worm mode")
    );
    assert_eq!(
        r.c(&["SET", "new", "1"]),
        bulk(b"new"),
        "worm allows new keys"
    );
    assert_eq!(r.c(&["NSSET", "ns1", "worm", "0"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "ns1", "lock", "1"]), simple("OK"));
    assert_eq!(
        r.c(&["SET", "a", "3"]),
        err("Namespace is temporarily locked (read-only)")
    );
    assert_eq!(
        r.c(&["DEL", "a"]),
        err("Namespace is temporarily locked (read-only)")
    );
    assert_eq!(r.c(&["GET", "a"]), bulk(b"1"), "reads work while locked");
    assert_eq!(r.c(&["NSSET", "ns1", "lock", "0"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "ns1", "freeze", "1"]), simple("OK"));
    assert_eq!(
        r.c(&["GET", "a"]),
        err("Namespace is temporarily frozen (read-write disabled)")
    );
    assert_eq!(
        r.c(&["SET", "a", "3"]),
        err("Namespace is temporarily frozen (read-write disabled)")
    );
    assert_eq!(r.c(&["NSSET", "ns1", "freeze", "0"]), simple("OK"));
    assert_eq!(r.c(&["GET", "a"]), bulk(b"1"));
    assert_eq!(
        r.c(&["NSSET", "ns1", "mode", "seq"]),
        err("Cannot change mode of used namespace")
    );

    // FLUSH needs a private, password-protected namespace.
    assert_eq!(r.c(&["FLUSH"]), err("Flushing public namespace denied"));
    assert_eq!(r.c(&["NSSET", "ns1", "password", "pw"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "ns1", "public", "0"]), simple("OK"));
    assert_eq!(r.c(&["FLUSH"]), simple("OK"));
    assert_eq!(r.c(&["DBSIZE"]), int(0));
    assert_eq!(r.c(&["GET", "a"]), OwnedFrame::Null);

    // NSDEL: not the current one, not default; other clients in it get disconnected.
    assert_eq!(
        r.c(&["NSDEL", "ns1"]),
        err("Cannot remove namespace you're currently using.")
    );
    assert_eq!(
        r.c(&["NSDEL", "default"]),
        err("Cannot remove default namespace")
    );
    assert_eq!(
        r.c(&["NSDEL", "nope"]),
        err("This namespace doesn't exists")
    );
    let mut admin = Raw::connect(z.port);
    assert_eq!(admin.c(&["NSDEL", "ns1"]), simple("OK"));
    assert_eq!(
        r.c(&["GET", "a"]),
        err("Your active namespace is not available anymore (probably removed).")
    );
    assert_eq!(
        r.read_frame(),
        None,
        "client of a removed namespace is disconnected"
    );
    assert!(!dir.path().join("data/ns1").exists());
    assert_eq!(
        admin.c(&["NSLIST"]),
        OwnedFrame::Array(vec![bulk(b"default")])
    );

    // RELOAD and NSJUMP.
    assert_eq!(admin.c(&["SET", "k", "v"]), bulk(b"k"));
    assert_eq!(admin.c(&["NSJUMP"]), simple("OK"));
    assert!(dir.path().join("data/default/d1").exists());
    assert!(dir.path().join("index/default/i1").exists());
    assert_eq!(admin.c(&["SET", "k2", "v2"]), bulk(b"k2"));
    assert_eq!(admin.c(&["RELOAD", "default"]), simple("OK"));
    assert_eq!(admin.c(&["GET", "k"]), bulk(b"v"));
    assert_eq!(admin.c(&["GET", "k2"]), bulk(b"v2"));
    assert_eq!(admin.c(&["RELOAD", "nope"]), err("Namespace not found"));
}

#[test]
fn passwords_public_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &["--admin", "adminpw"]);
    let mut admin = Raw::connect(z.port);
    let mut user = Raw::connect(z.port);

    // Non-admin clients.
    assert_eq!(user.c(&["NSNEW", "x"]), err("Permission denied"));
    assert_eq!(
        user.c(&["NSSET", "x", "public", "1"]),
        err("Permission denied")
    );
    assert_eq!(user.c(&["NSDEL", "x"]), err("Permission denied"));
    assert_eq!(user.c(&["RELOAD", "default"]), err("Permission denied"));
    assert_eq!(
        user.c(&["SET", "k", "v", "1000"]),
        err("Permission denied"),
        "timestamp SET is admin-only"
    );
    assert_eq!(user.c(&["AUTH", "wrong"]), err("Access denied"));
    assert_eq!(user.c(&["AUTH"]), err("Unexpected arguments"));

    // Plain AUTH.
    assert_eq!(admin.c(&["AUTH", "adminpw"]), simple("OK"));
    assert_eq!(admin.c(&["NSNEW", "pub"]), simple("OK"));
    assert_eq!(
        admin.c(&["NSSET", "pub", "password", "secret"]),
        simple("OK")
    );
    assert_eq!(admin.c(&["NSNEW", "priv"]), simple("OK"));
    assert_eq!(
        admin.c(&["NSSET", "priv", "password", "secret2"]),
        simple("OK")
    );
    assert_eq!(admin.c(&["NSSET", "priv", "public", "0"]), simple("OK"));
    assert_eq!(admin.c(&["SELECT", "pub", "secret"]), simple("OK"));
    assert_eq!(admin.c(&["SET", "k", "v"]), bulk(b"k"));

    // Public + password: read-only without the password.
    assert_eq!(user.c(&["SELECT", "pub"]), simple("OK"));
    assert_eq!(user.c(&["GET", "k"]), bulk(b"v"));
    assert_eq!(
        user.c(&["SET", "k", "w"]),
        err("Namespace is in read-only mode")
    );
    assert_eq!(user.c(&["DEL", "k"]), err("Namespace is in read-only mode"));
    assert_eq!(user.c(&["SELECT", "pub", "wrong"]), err("Access denied"));
    assert_eq!(user.c(&["SELECT", "pub", "secret"]), simple("OK"));
    assert_eq!(user.c(&["SET", "k", "w"]), bulk(b"k"));

    // Private: refused without the password.
    assert_eq!(
        user.c(&["SELECT", "priv"]),
        err("Namespace protected and private")
    );
    assert_eq!(
        user.c(&["SELECT", "priv", "a", "b", "c"]),
        err("Too many arguments")
    );

    // SELECT SECURE.
    assert_eq!(
        user.c(&["SELECT", "priv", "SECURE", &"0".repeat(40)]),
        err("No CHALLENGE requested, secure authentication not available")
    );
    let nonce = challenge(&mut user);
    assert_eq!(
        user.c(&["SELECT", "priv", "SECURE", "abc"]),
        err("Invalid hash length")
    );
    assert_eq!(
        user.c(&["SELECT", "priv", "SECURE", &"0".repeat(40)]),
        err("Access denied")
    );
    let proof = sha1_hex(&format!("{nonce}:secret2"));
    assert_eq!(user.c(&["SELECT", "priv", "SECURE", &proof]), simple("OK"));
    assert_eq!(user.c(&["SET", "p", "1"]), bulk(b"p"));

    // AUTH SECURE.
    let mut u2 = Raw::connect(z.port);
    assert_eq!(
        u2.c(&["AUTH", "SECURE", &"0".repeat(40)]),
        err("No CHALLENGE requested, secure authentication not available")
    );
    assert_eq!(
        u2.c(&["AUTH", "OTHER", "x"]),
        err("Only SECURE extra method supported")
    );
    let nonce = challenge(&mut u2);
    assert_eq!(
        u2.c(&["AUTH", "SECURE", &sha1_hex(&format!("{nonce}:bad"))]),
        err("Access denied")
    );
    // The challenge is single-use.
    assert_eq!(
        u2.c(&["AUTH", "SECURE", &sha1_hex(&format!("{nonce}:adminpw"))]),
        err("No CHALLENGE requested, secure authentication not available")
    );
    let nonce = challenge(&mut u2);
    assert_eq!(
        u2.c(&["AUTH", "SECURE", &sha1_hex(&format!("{nonce}:adminpw"))]),
        simple("OK")
    );
    assert_eq!(u2.c(&["NSNEW", "byu2"]), simple("OK"));

    // Clearing the password with "*".
    assert_eq!(admin.c(&["NSSET", "priv", "password", "*"]), simple("OK"));
    let mut u3 = Raw::connect(z.port);
    assert_eq!(u3.c(&["SELECT", "priv"]), simple("OK"));
    assert_eq!(u3.c(&["GET", "p"]), bulk(b"1"));
}

#[test]
fn settings_persist_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["NSNEW", "keep"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "keep", "password", "pw"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "keep", "public", "0"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "keep", "maxsize", "12345"]), simple("OK"));
    assert_eq!(r.c(&["NSSET", "keep", "lock", "1"]), simple("OK"));
    drop(r);
    z.restart();
    let mut r = Raw::connect(z.port);
    assert_eq!(
        r.c(&["SELECT", "keep"]),
        err("Namespace protected and private")
    );
    assert_eq!(r.c(&["SELECT", "keep", "pw"]), simple("OK"));
    assert_eq!(r.c(&["SET", "a", "b"]), bulk(b"a"), "lock is runtime-only");
    let info = String::from_utf8(bytes_of(&r.c(&["NSINFO", "keep"]))).unwrap();
    assert!(info.contains("data_limits_bytes: 12345"), "{info}");
    assert!(info.contains("public: no"), "{info}");
}

#[test]
fn protect_mode_makes_default_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &["--admin", "root", "--protect"]);
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["GET", "x"]), OwnedFrame::Null);
    assert_eq!(
        r.c(&["SET", "x", "1"]),
        err("Namespace is in read-only mode")
    );
    assert_eq!(r.c(&["SELECT", "default"]), simple("OK"));
    assert_eq!(
        r.c(&["SET", "x", "1"]),
        err("Namespace is in read-only mode")
    );
    assert_eq!(r.c(&["SELECT", "default", "nope"]), err("Access denied"));
    assert_eq!(r.c(&["SELECT", "default", "root"]), simple("OK"));
    assert_eq!(r.c(&["SET", "x", "1"]), bulk(b"x"));
}

#[test]
fn seq_mode_ids_are_8_byte_little_endian() {
    let dir = tempfile::tempdir().unwrap();
    let mut z = start(dir.path(), &["--mode", "seq"]);
    let mut r = Raw::connect(z.port);
    for i in 0u64..5 {
        assert_eq!(
            r.cmd(&[b"SET", b"", format!("v{i}").as_bytes()]),
            bulk(&i.to_le_bytes())
        );
    }
    assert_eq!(r.cmd(&[b"GET", &2u64.to_le_bytes()]), bulk(b"v2"));
    // Update an existing id; unknown ids are refused.
    assert_eq!(
        r.cmd(&[b"SET", &2u64.to_le_bytes(), b"new"]),
        bulk(&2u64.to_le_bytes())
    );
    assert_eq!(r.cmd(&[b"GET", &2u64.to_le_bytes()]), bulk(b"new"));
    assert_eq!(
        r.cmd(&[b"SET", &99u64.to_le_bytes(), b"x"]),
        err("Invalid key, only update authorized")
    );
    assert_eq!(r.c(&["NSNEW", "other"]), simple("OK"));
    assert_eq!(
        r.c(&["NSSET", "other", "mode", "user"]),
        err("This server instance is configured to use a single runtime mode")
    );
    let info = String::from_utf8(bytes_of(&r.c(&["NSINFO", "default"]))).unwrap();
    assert!(info.contains("mode: sequential"), "{info}");
    // Ids continue after a restart.
    drop(r);
    z.restart();
    let mut r = Raw::connect(z.port);
    assert_eq!(r.cmd(&[b"SET", b"", b"v5"]), bulk(&5u64.to_le_bytes()));
    assert_eq!(r.cmd(&[b"GET", &0u64.to_le_bytes()]), bulk(b"v0"));
}

#[test]
fn mixed_mode_switches_empty_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut r = Raw::connect(z.port);
    assert_eq!(r.c(&["NSNEW", "s"]), simple("OK"));
    assert_eq!(
        r.c(&["NSSET", "s", "mode", "bogus"]),
        err("Invalid property value (expected: user, seq)")
    );
    assert_eq!(r.c(&["NSSET", "s", "mode", "seq"]), simple("OK"));
    assert_eq!(r.c(&["SELECT", "s"]), simple("OK"));
    assert_eq!(r.cmd(&[b"SET", b"", b"a"]), bulk(&0u64.to_le_bytes()));
    assert_eq!(
        r.c(&["KSCAN", "x"]),
        err("Index running mode doesn't support this feature")
    );
    assert_eq!(r.c(&["SELECT", "default"]), simple("OK"));
    assert_eq!(r.c(&["SET", "", "a"]), err("Invalid argument, key needed"));
}

#[test]
fn wait_is_woken_by_another_client() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let port = z.port;
    let waiter = std::thread::spawn(move || {
        let mut w = Raw::connect(port);
        let a = w.c(&["WAIT", "SET", "10000"]);
        let b = w.c(&["WAIT", "*", "10000"]);
        (a, b)
    });
    let mut r = Raw::connect(port);
    // Keep poking until the waiter has been woken twice (it may subscribe after our first commands).
    let start = std::time::Instant::now();
    while !waiter.is_finished() && start.elapsed().as_secs() < 15 {
        r.c(&["SET", "k", &format!("{:?}", std::time::Instant::now())]);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (a, b) = waiter.join().unwrap();
    assert_eq!(a, simple("SET"));
    assert_eq!(b, simple("SET"));
}

/// Without `--admin`, a client still gets a challenge and opens a private, password-protected namespace
/// with `SELECT ns SECURE <proof>` (the `redis` crate over TCP, as a real client would), never sending the
/// password; `AUTH` itself stays disabled.
#[test]
fn select_secure_without_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let z = start(dir.path(), &[]);
    let mut setup = Raw::connect(z.port);
    assert_eq!(setup.c(&["NSNEW", "vault"]), simple("OK"));
    assert_eq!(
        setup.c(&["NSSET", "vault", "password", "pw1"]),
        simple("OK")
    );
    assert_eq!(setup.c(&["NSSET", "vault", "public", "0"]), simple("OK"));

    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", z.port)).unwrap();
    let mut con = client.get_connection().unwrap();
    let denied = redis::cmd("SELECT")
        .arg("vault")
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(
        denied.to_string().contains("protected and private"),
        "{denied}"
    );

    let nonce: String = redis::cmd("AUTH")
        .arg("SECURE")
        .arg("CHALLENGE")
        .query(&mut con)
        .unwrap();
    assert_eq!(nonce.len(), 32, "challenge {nonce:?}");
    let wrong = redis::cmd("SELECT")
        .arg("vault")
        .arg("SECURE")
        .arg(sha1_hex(&format!("{nonce}:nope")))
        .query::<()>(&mut con)
        .unwrap_err();
    // The redis crate splits the error line into a code and a detail: "Access: denied".
    assert_eq!(wrong.code(), Some("Access"), "{wrong}");
    assert_eq!(wrong.detail(), Some("denied"), "{wrong}");
    let ok: String = redis::cmd("SELECT")
        .arg("vault")
        .arg("SECURE")
        .arg(sha1_hex(&format!("{nonce}:pw1")).to_uppercase())
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    let key: Vec<u8> = redis::cmd("SET")
        .arg("s")
        .arg("secret value")
        .query(&mut con)
        .unwrap();
    assert_eq!(key, b"s");
    let v: Vec<u8> = redis::cmd("GET").arg("s").query(&mut con).unwrap();
    assert_eq!(v, b"secret value");

    // The value landed in the vault, not in default.
    assert_eq!(setup.c(&["GET", "s"]), OwnedFrame::Null);
    assert_eq!(setup.c(&["SELECT", "vault", "pw1"]), simple("OK"));
    assert_eq!(setup.c(&["GET", "s"]), bulk(b"secret value"));

    // Admin authentication is still disabled: every client is admin already.
    let mut r = Raw::connect(z.port);
    let nonce = challenge(&mut r);
    assert_eq!(
        r.c(&["AUTH", "SECURE", &sha1_hex(&format!("{nonce}:x"))]),
        err("Authentication disabled")
    );
    assert_eq!(r.c(&["AUTH", "x"]), err("Authentication disabled"));
}
