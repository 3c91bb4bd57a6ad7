//! Fuzz target: store URL and path handling without I/O: `StoreLocation::parse` (every scheme),
//! `route:` URLs, `redact_url`, the `http(s)://` store's base URL and object URLs, and the `dir://`
//! store's object paths. Properties: no panic; a redacted URL shows no password; an HTTP object URL stays
//! on the store's host under its base path; a dir object path stays two levels under the root.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use store::{redact_url, route_entries, ChunkId, DirStore, HttpStore, StoreLocation};

fn dir_store() -> &'static (tempfile::TempDir, DirStore) {
    static S: OnceLock<(tempfile::TempDir, DirStore)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open(dir.path().join("objects")).expect("dir store");
        (dir, store)
    })
}

fn check_redacted(input: &str) {
    let redacted = redact_url(input);
    let Ok(parsed) = url::Url::parse(input) else {
        return;
    };
    if parsed.scheme() == "dir" {
        return;
    }
    // The same text may legitimately appear elsewhere in the URL (its path), so the check is on what
    // the redacted URL says its password is.
    if let Ok(r) = url::Url::parse(&redacted) {
        assert!(
            r.password().is_none_or(|p| p == "***"),
            "password left in {redacted:?}"
        );
        for (k, v) in r.query_pairs() {
            if matches!(k.as_ref(), "password" | "admin") {
                assert_eq!(v, "***", "secret query parameter left in {redacted:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_redacted(text);
    if let Ok(StoreLocation::Dir(p)) = StoreLocation::parse(text) {
        assert_eq!(Some(p.as_path()), text.strip_prefix("dir://").map(Path::new));
    }
    let _ = route_entries(text);

    // Object names: any 32 bytes of the input as an id, and the input itself as hex.
    let mut raw = [0u8; 32];
    let n = data.len().min(32);
    raw[..n].copy_from_slice(&data[..n]);
    let id = ChunkId(raw);
    let hex = id.to_hex();
    assert_eq!(ChunkId::from_hex(&hex).ok(), Some(id));
    if let Ok(parsed) = ChunkId::from_hex(text) {
        assert_eq!(parsed.to_hex(), text.to_ascii_lowercase());
    }
    let (_, dir) = dir_store();
    let path = dir.object_path(&id);
    assert_eq!(path.parent().and_then(Path::parent), Some(dir.root()));
    assert_eq!(path.file_name().and_then(|f| f.to_str()), Some(hex.as_str()));

    if let Ok(http) = HttpStore::open(text) {
        let object = http.object_url(&id);
        let o = url::Url::parse(&object).expect("object URL parses");
        let base = url::Url::parse(text).expect("an opened store URL parses");
        assert_eq!(o.host_str(), base.host_str(), "object URL changed host");
        assert_eq!(o.port_or_known_default(), base.port_or_known_default());
        let suffix = format!("/{}/{}", &hex[..2], hex);
        assert!(o.path().ends_with(&suffix), "object path {:?}", o.path());
    }
});
