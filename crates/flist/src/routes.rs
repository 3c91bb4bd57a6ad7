//! The route table: which store holds a block, by the first byte of its id; and the translation between
//! rfs store URLs and thinnode store URLs (docs/flist.md, "Routes").
//!
//! rfs matches a block id against every route whose `start..=end` covers `id[0]`: a read tries those
//! stores (in random order) until one answers, a write goes to all of them. thinnode's `route:` store
//! does the same with "replicas" of a range, so an flist's table maps onto one `route:` URL whose ranges
//! are the table's elementary intervals, each listing every store that covers it.

use store::zdb::{Endpoint, ZdbConfig, DEFAULT_NAMESPACE};
use store::{S3Config, StoreLocation};
use url::Url;

use crate::FlistError;

/// One row of the `route` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// First byte of the ids this store holds (inclusive).
    pub start: u8,
    /// Last first byte (inclusive).
    pub end: u8,
    /// The store, as an rfs URL.
    pub url: String,
}

fn bad_url(url: &str, reason: impl Into<String>) -> FlistError {
    FlistError::Url {
        url: store::redact_url(url),
        reason: reason.into(),
    }
}

/// Our query options of `http(s)://` stores, which rfs does not know (other query parameters, such as
/// CDN tokens, are part of the object URL for both).
const HTTP_OPTIONS: [&str; 3] = ["timeout_ms", "parallel", "retries"];

/// The thinnode store URL of one rfs store URL: `dir://PATH` and `http(s)://…` are the same;
/// `zdb://[user[:pass]@]host[:port][/ns]` keeps its form (the namespace is the last path segment, as in
/// rfs); `zdb:///path.sock` becomes `zdb+unix:///path.sock`; `s3://KEY:SECRET@host:port/bucket?region=R`
/// (`s3s://` or `s3+tls://` for https) becomes `s3://bucket?endpoint=http(s)://host:port&…`. rfs's
/// `server://` store (its fl-server) is not supported.
pub fn store_url_from_rfs(url: &str) -> Result<String, FlistError> {
    let parsed = Url::parse(url).map_err(|e| bad_url(url, e.to_string()))?;
    match parsed.scheme() {
        "dir" => {
            let path = parsed.path();
            if path.is_empty() || path == "/" {
                return Err(bad_url(url, "a dir:// route needs a path"));
            }
            Ok(format!("dir://{path}"))
        }
        "http" | "https" => Ok(url.to_string()),
        "zdb" => match parsed.host_str().filter(|h| !h.is_empty()) {
            Some(_) => {
                let namespace = parsed
                    .path_segments()
                    .and_then(|mut s| s.next_back())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(DEFAULT_NAMESPACE)
                    .to_string();
                let mut out = parsed.clone();
                out.set_path(&format!("/{namespace}"));
                out.set_query(None);
                out.set_fragment(None);
                Ok(out.to_string())
            }
            None => Ok(format!("zdb+unix://{}", parsed.path())),
        },
        "s3" | "s3s" | "s3+tls" => {
            let host = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad_url(url, "an s3 route needs host:port"))?;
            let port = parsed
                .port()
                .ok_or_else(|| bad_url(url, "an s3 route needs an explicit port, as rfs does"))?;
            let scheme = if parsed.scheme() == "s3" {
                "http"
            } else {
                "https"
            };
            let bucket = parsed.path().trim_matches('/');
            if bucket.is_empty() {
                return Err(bad_url(url, "an s3 route needs a bucket: s3://host:port/bucket"));
            }
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("endpoint", &format!("{scheme}://{host}:{port}"));
            query.append_pair("path_style", "true");
            if let Some((_, region)) = parsed
                .query_pairs()
                .find(|(k, v)| k == "region" && !v.is_empty())
            {
                query.append_pair("region", &region);
            }
            let user = percent_decode(parsed.username());
            if let Some(secret) = parsed.password() {
                query.append_pair("access_key_id", &user);
                query.append_pair("secret_access_key", &percent_decode(secret));
            }
            Ok(format!("s3://{bucket}?{}", query.finish()))
        }
        "server" => Err(bad_url(
            url,
            "rfs's fl-server store (server://) is not supported; copy its blocks to a dir, zdb, s3 or \
             http store and pass it with --store",
        )),
        other => Err(bad_url(url, format!("unknown rfs store type {other:?}"))),
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The rfs URL of one thinnode single-store URL (the inverse of [`store_url_from_rfs`]), with any
/// password kept. Refused: `disperse:` (rfs cannot read erasure-coded shards), an s3 prefix (rfs keeps
/// blocks at the bucket's top level), a unix-socket zdb namespace other than `default` (rfs cannot select
/// one on a socket). Client-side options (timeouts, pools, `secure=1`, `admin=`) have no rfs form and are
/// left out.
pub fn rfs_url_from_store(url: &str) -> Result<String, FlistError> {
    if url.starts_with(store::DISPERSE_PREFIX) {
        return Err(bad_url(
            url,
            "rfs cannot read erasure-coded (disperse:) stores; write the flist's blocks to a dir, zdb, \
             s3 or http store",
        ));
    }
    if url.starts_with(store::ROUTE_PREFIX) {
        return Err(bad_url(url, "a route: URL maps onto several routes"));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return rfs_http_url(url);
    }
    match StoreLocation::parse(url).map_err(|e| bad_url(url, e.to_string()))? {
        StoreLocation::Dir(path) => {
            let absolute = std::path::absolute(&path)
                .map_err(|e| bad_url(url, format!("cannot make the path absolute: {e}")))?;
            let text = absolute
                .to_str()
                .ok_or_else(|| bad_url(url, "the path is not UTF-8"))?;
            Ok(format!("dir://{text}"))
        }
        StoreLocation::Zdb(config) => rfs_zdb_url(url, &config),
        StoreLocation::S3(config) => rfs_s3_url(url, &config),
    }
}

/// An http(s) store URL without the client-side options rfs does not know.
fn rfs_http_url(url: &str) -> Result<String, FlistError> {
    let mut parsed = Url::parse(url).map_err(|e| bad_url(url, e.to_string()))?;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| !HTTP_OPTIONS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(parsed.to_string())
}

/// rfs's `zdb://host:port/namespace` (password as URL password) or `zdb:///socket` form of `url`.
fn rfs_zdb_url(url: &str, config: &ZdbConfig) -> Result<String, FlistError> {
    match &config.endpoint {
        Endpoint::Tcp { host, port } => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let mut out = Url::parse(&format!("zdb://{host}:{port}/"))
                .map_err(|e| bad_url(url, e.to_string()))?;
            out.set_path(&format!("/{}", config.namespace));
            if let Some(p) = &config.password {
                out.set_password(Some(p))
                    .map_err(|_| bad_url(url, "cannot put the password in the URL"))?;
            }
            Ok(out.to_string())
        }
        Endpoint::Unix(path) => {
            if config.namespace != DEFAULT_NAMESPACE {
                return Err(bad_url(
                    url,
                    "rfs cannot select a namespace on a unix socket; use the default namespace or \
                     a zdb://host:port/namespace URL",
                ));
            }
            let text = path
                .to_str()
                .ok_or_else(|| bad_url(url, "the socket path is not UTF-8"))?;
            Ok(format!("zdb://{text}"))
        }
    }
}

/// rfs's `s3[s]://KEY:SECRET@host:port/bucket?region=…` form of `url` (no prefix allowed).
fn rfs_s3_url(url: &str, config: &S3Config) -> Result<String, FlistError> {
    if !config.prefix.is_empty() {
        return Err(bad_url(
            url,
            "rfs keeps blocks at the top of the bucket; use an s3:// URL without a prefix",
        ));
    }
    let region = config.region.clone();
    let endpoint = config.endpoint.clone().unwrap_or_else(|| {
        format!(
            "https://s3.{}.amazonaws.com",
            region.as_deref().unwrap_or(store::S3_DEFAULT_REGION)
        )
    });
    let ep = Url::parse(&endpoint).map_err(|e| bad_url(url, e.to_string()))?;
    let scheme = match ep.scheme() {
        "http" => "s3",
        "https" => "s3s",
        other => return Err(bad_url(url, format!("endpoint scheme {other:?}"))),
    };
    let host = ep
        .host_str()
        .ok_or_else(|| bad_url(url, "the endpoint has no host"))?;
    let port = ep
        .port_or_known_default()
        .ok_or_else(|| bad_url(url, "the endpoint has no port"))?;
    let mut out = Url::parse(&format!("{scheme}://{host}:{port}/"))
        .map_err(|e| bad_url(url, e.to_string()))?;
    out.set_path(&format!("/{}", config.bucket));
    if let Some(key) = &config.access_key_id {
        let _ = out.set_username(key);
        if let Some(secret) = &config.secret_access_key {
            let _ = out.set_password(Some(secret));
        }
    }
    if let Some(r) = &region {
        out.query_pairs_mut().append_pair("region", r);
    }
    Ok(out.to_string())
}

/// `url` without its password, as rfs records routes by default (the user name stays, as in rfs).
pub fn strip_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Whether an rfs URL carries a password.
pub fn has_password(url: &str) -> bool {
    Url::parse(url).is_ok_and(|u| u.password().is_some())
}

/// The thinnode store URL that reads blocks the way rfs reads the route table `routes`: one plain URL when
/// a single route covers `00-ff`, else a `route:` URL over the table's elementary intervals, each listing
/// every store whose range covers it (rfs tries all of them). First bytes no route covers are left out,
/// so opening the store fails naming them (pass `--store` instead).
pub fn store_url_of_routes(routes: &[Route]) -> Result<String, FlistError> {
    if routes.is_empty() {
        return Err(FlistError::Url {
            url: String::new(),
            reason: "the flist has no routes (no store is named); pass --store".into(),
        });
    }
    let mut urls = Vec::with_capacity(routes.len());
    for r in routes {
        if r.start > r.end {
            return Err(bad_url(
                &r.url,
                format!("route {}-{} is reversed", r.start, r.end),
            ));
        }
        let u = store_url_from_rfs(&r.url)?;
        if u.contains(char::is_whitespace) {
            return Err(bad_url(
                &r.url,
                "a store URL with whitespace cannot be routed",
            ));
        }
        urls.push(u);
    }
    if routes.len() == 1 && routes[0].start == 0 && routes[0].end == 255 {
        return Ok(urls.swap_remove(0));
    }
    // Elementary intervals: cut at every start and every end + 1.
    let mut cuts: Vec<u16> = routes
        .iter()
        .flat_map(|r| [u16::from(r.start), u16::from(r.end) + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut spec = String::from(store::ROUTE_PREFIX);
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let mut seen: Vec<&str> = Vec::new();
        for (r, u) in routes.iter().zip(&urls) {
            let covers = u16::from(r.start) <= lo && hi <= u16::from(r.end);
            if covers && !seen.contains(&u.as_str()) {
                seen.push(u);
                spec.push_str(&format!(" {lo:02x}-{hi:02x}={u}"));
            }
        }
    }
    Ok(spec)
}

/// The route rows for a thinnode store URL (a single store, or `route:` whose ranges and replicas become
/// rows), with rfs URLs; passwords removed unless `keep_passwords`.
pub fn routes_of_store_url(url: &str, keep_passwords: bool) -> Result<Vec<Route>, FlistError> {
    let entries: Vec<(u8, u8, String)> = if url.starts_with(store::ROUTE_PREFIX) {
        store::route_entries(url).map_err(|e| bad_url(url, e.to_string()))?
    } else {
        vec![(0, 255, url.to_string())]
    };
    entries
        .into_iter()
        .map(|(start, end, member)| {
            let rfs = rfs_url_from_store(&member)?;
            Ok(Route {
                start,
                end,
                url: if keep_passwords {
                    rfs
                } else {
                    strip_password(&rfs)
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(start: u8, end: u8, url: &str) -> Route {
        Route {
            start,
            end,
            url: url.into(),
        }
    }

    #[test]
    fn rfs_urls_become_store_urls() {
        for (rfs, ours) in [
            ("dir:///tmp/rfs-fixtures/store-dir", "dir:///tmp/rfs-fixtures/store-dir"),
            ("zdb://127.0.0.1:19800/default", "zdb://127.0.0.1:19800/default"),
            ("zdb://rfs@127.0.0.1:19800/rfsns", "zdb://rfs@127.0.0.1:19800/rfsns"),
            ("zdb://rfs:s3cret@h:9900/a/ns", "zdb://rfs:s3cret@h:9900/ns"),
            ("zdb://hub.grid.tf", "zdb://hub.grid.tf/default"),
            ("zdb:///var/run/zdb.sock", "zdb+unix:///var/run/zdb.sock"),
            ("https://hub.grid.tf/blocks", "https://hub.grid.tf/blocks"),
            (
                "s3://AK:S%2FK@10.0.0.1:9000/bucket?region=minio",
                "s3://bucket?endpoint=http%3A%2F%2F10.0.0.1%3A9000&path_style=true&region=minio&access_key_id=AK&secret_access_key=S%2FK",
            ),
            (
                "s3s://AK@s3.example.org:443/bkt",
                "s3://bkt?endpoint=https%3A%2F%2Fs3.example.org%3A443&path_style=true",
            ),
        ] {
            assert_eq!(store_url_from_rfs(rfs).unwrap(), ours, "{rfs}");
            // Every translation opens as a thinnode store URL.
            if !ours.starts_with("http") {
                StoreLocation::parse(&ours.replace("/a/ns", "/ns")).unwrap();
            }
        }
        assert!(store_url_from_rfs("server://hub/x?token=t").is_err());
        assert!(
            store_url_from_rfs("s3://h/bucket").is_err(),
            "rfs needs a port"
        );
        assert!(store_url_from_rfs("ftp://h/x").is_err());
    }

    #[test]
    fn store_urls_become_rfs_urls_and_back() {
        for ours in [
            "dir:///srv/blocks",
            "zdb://127.0.0.1:9900/default",
            "zdb://:pw@10.1.2.3:9901/ns1",
            "zdb+unix:///run/zdb.sock",
            "https://cdn.example.org/blocks?token=abc",
        ] {
            let rfs = rfs_url_from_store(ours).unwrap();
            let back = store_url_from_rfs(&rfs).unwrap();
            assert_eq!(
                StoreLocation::parse(&back).ok(),
                StoreLocation::parse(ours).ok(),
                "{ours} -> {rfs} -> {back}"
            );
        }
        assert_eq!(
            rfs_url_from_store("zdb://h/ns?timeout_ms=5&secure=1").unwrap(),
            "zdb://h:9900/ns"
        );
        assert_eq!(
            rfs_url_from_store("http://h/b?timeout_ms=5&token=x").unwrap(),
            "http://h/b?token=x"
        );
        assert_eq!(
            rfs_url_from_store(
                "s3://bkt?endpoint=http://127.0.0.1:8333&region=us-east-1&access_key_id=AK&secret_access_key=SK"
            )
            .unwrap(),
            "s3://AK:SK@127.0.0.1:8333/bkt?region=us-east-1"
        );
        assert!(rfs_url_from_store("s3://bkt/prefix?endpoint=http://h:1").is_err());
        assert!(rfs_url_from_store("zdb+unix:///run/zdb.sock?ns=other").is_err());
        assert!(rfs_url_from_store("disperse:1+1 dir:///a dir:///b").is_err());
    }

    #[test]
    fn passwords_are_stripped_like_rfs_does() {
        assert_eq!(
            strip_password("zdb://rfs:s3cret@127.0.0.1:19800/rfsns"),
            "zdb://rfs@127.0.0.1:19800/rfsns"
        );
        assert_eq!(strip_password("zdb://h:1/ns"), "zdb://h:1/ns");
        let rows = routes_of_store_url("zdb://:pw@h:1/ns", false).unwrap();
        assert_eq!(rows, vec![route(0, 255, "zdb://h:1/ns")]);
        let rows = routes_of_store_url("zdb://:pw@h:1/ns", true).unwrap();
        assert_eq!(rows, vec![route(0, 255, "zdb://:pw@h:1/ns")]);
        assert!(has_password(&rows[0].url));
    }

    #[test]
    fn route_tables_map_onto_route_urls() {
        assert_eq!(
            store_url_of_routes(&[route(0, 255, "dir:///a")]).unwrap(),
            "dir:///a"
        );
        assert_eq!(
            store_url_of_routes(&[route(0, 127, "dir:///lo"), route(128, 255, "dir:///hi")])
                .unwrap(),
            "route: 00-7f=dir:///lo 80-ff=dir:///hi"
        );
        // Overlapping ranges: every store covering an interval is a replica of it.
        assert_eq!(
            store_url_of_routes(&[route(0, 255, "dir:///all"), route(0, 127, "dir:///lo")])
                .unwrap(),
            "route: 00-7f=dir:///all 00-7f=dir:///lo 80-ff=dir:///all"
        );
        let gap = store_url_of_routes(&[route(0, 127, "dir:///lo")]).unwrap();
        assert_eq!(gap, "route: 00-7f=dir:///lo");
        assert!(
            store::RouterStore::open(&gap).is_err(),
            "a gap must not open"
        );
        assert!(store_url_of_routes(&[]).is_err());
        // And back: route: URLs become rows.
        assert_eq!(
            routes_of_store_url("route: 00-7f=dir:///lo 80-ff=dir:///hi", false).unwrap(),
            vec![route(0, 127, "dir:///lo"), route(128, 255, "dir:///hi")]
        );
    }
}
