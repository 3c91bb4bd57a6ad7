//! Store URLs: which backend a URL names and with which settings. The syntax is documented in
//! docs/stores.md.

use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use url::{Host, Url};

use crate::s3::{self, S3Config};
use crate::zdb::{Endpoint, ZdbConfig, DEFAULT_NAMESPACE, DEFAULT_PORT};
use crate::StoreError;

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `dir://PATH`: objects as files below `PATH` (relative paths are relative to the working directory).
    Dir(PathBuf),
    /// `zdb://…` or `zdb+unix://…`: a 0-db namespace.
    Zdb(ZdbConfig),
    /// `s3://BUCKET[/PREFIX]?…`: objects in an S3 bucket.
    S3(Box<S3Config>),
}

/// Query parameters that carry secrets and never appear in public URLs or error messages.
const SECRET_PARAMS: [&str; 2 + s3::SECRET_OPTIONS.len()] = [
    "password",
    "admin",
    s3::SECRET_OPTIONS[0],
    s3::SECRET_OPTIONS[1],
    s3::SECRET_OPTIONS[2],
];

impl StoreLocation {
    /// Parses a store URL (`dir://PATH`, `zdb://[user:pass@]host[:port][/namespace][?options]`,
    /// `zdb+unix:///socket/path[?ns=NAME&password=PWD&options]`, `s3://BUCKET[/PREFIX][?options]`).
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: redact_url(url),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("dir://") {
            if path.is_empty() {
                return Err(invalid(
                    "dir:// needs a path, e.g. dir:///var/lib/chunks or dir://chunks",
                ));
            }
            return Ok(StoreLocation::Dir(PathBuf::from(path)));
        }
        let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        match parsed.scheme() {
            "zdb" => parse_zdb_tcp(&parsed)
                .map(StoreLocation::Zdb)
                .map_err(|r| invalid(&r)),
            "zdb+unix" => parse_zdb_unix(&parsed)
                .map(StoreLocation::Zdb)
                .map_err(|r| invalid(&r)),
            "s3" => S3Config::parse(&parsed)
                .map(|c| StoreLocation::S3(Box::new(c)))
                .map_err(|r| invalid(&r)),
            other => Err(invalid(&format!(
                "unknown scheme {other:?} (supported: dir, zdb, zdb+unix, s3, http, https, route:, disperse:)"
            ))),
        }
    }
}

fn decode(text: &str, what: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{what} is not valid UTF-8 after percent-decoding"))
}

fn parse_zdb_tcp(url: &Url) -> Result<ZdbConfig, String> {
    let host = match url.host() {
        Some(Host::Domain(d)) if !d.is_empty() => decode(d, "host")?,
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err("zdb:// needs a host, e.g. zdb://127.0.0.1:9900/namespace".into()),
    };
    let port = url.port().unwrap_or(DEFAULT_PORT);
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    if path.contains('/') {
        return Err("the path must be a single namespace name".into());
    }
    let namespace = if path.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        decode(path, "namespace")?
    };
    let mut config = ZdbConfig::new(Endpoint::Tcp { host, port }, namespace);
    if let Some(pass) = url.password() {
        config.password = Some(decode(pass, "password")?);
    }
    apply_options(url, &mut config, false)?;
    Ok(config)
}

fn parse_zdb_unix(url: &Url) -> Result<ZdbConfig, String> {
    if url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(
            "zdb+unix:// takes an absolute socket path and no host: zdb+unix:///run/zdb.sock"
                .into(),
        );
    }
    let path = decode(url.path(), "socket path")?;
    if path.is_empty() || path == "/" {
        return Err("zdb+unix:// needs a socket path: zdb+unix:///run/zdb.sock?ns=NAME".into());
    }
    let mut config = ZdbConfig::new(
        Endpoint::Unix(PathBuf::from(path)),
        DEFAULT_NAMESPACE.to_string(),
    );
    if let Some(pass) = url.password() {
        config.password = Some(decode(pass, "password")?);
    }
    apply_options(url, &mut config, true)?;
    Ok(config)
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("option {key}={value:?} is not a valid number"))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" | "on" | "" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("option {key}={value:?} is not a boolean")),
    }
}

fn apply_options(url: &Url, config: &mut ZdbConfig, unix: bool) -> Result<(), String> {
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "ns" | "namespace" if unix => {
                if value.is_empty() {
                    return Err("ns= must not be empty".into());
                }
                config.namespace = value.into_owned();
            }
            "password" => config.password = Some(value.into_owned()),
            "admin" => config.admin_password = Some(value.into_owned()),
            "secure" => config.secure_auth = parse_bool(&key, &value)?,
            "timeout_ms" => config.io_timeout = Duration::from_millis(parse_number(&key, &value)?),
            "connect_timeout_ms" => {
                config.connect_timeout = Duration::from_millis(parse_number(&key, &value)?)
            }
            "pool" => config.pool_size = parse_number(&key, &value)?,
            "retries" => config.retries = parse_number(&key, &value)?,
            "window" => config.pipeline_window = parse_number::<usize>(&key, &value)?.max(1),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if config.io_timeout.is_zero() || config.connect_timeout.is_zero() {
        return Err("timeouts must be greater than zero".into());
    }
    Ok(())
}

/// `url` with its password (user-info and secret query parameters) replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.scheme() != "dir" => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
                // An S3 user name would be an access key id.
                if parsed.scheme() == "s3" {
                    let _ = parsed.set_username("***");
                }
            }
            if parsed.query().is_some() {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if SECRET_PARAMS.contains(&k.as_ref()) {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparseable: hide everything between the scheme and an '@', and any query.
        Err(_) => {
            let without_query = url.split('?').next().unwrap_or(url);
            match (without_query.find("://"), without_query.rfind('@')) {
                (Some(start), Some(at)) if at > start => format!(
                    "{}***{}",
                    without_query.get(..start + 3).unwrap_or_default(),
                    without_query.get(at..).unwrap_or_default()
                ),
                _ => without_query.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zdb(url: &str) -> ZdbConfig {
        match StoreLocation::parse(url) {
            Ok(StoreLocation::Zdb(c)) => c,
            other => panic!("{url}: expected a zdb location, got {other:?}"),
        }
    }

    #[test]
    fn dir_urls_keep_absolute_and_relative_paths() {
        assert_eq!(
            StoreLocation::parse("dir:///var/lib/chunks").unwrap(),
            StoreLocation::Dir(PathBuf::from("/var/lib/chunks"))
        );
        assert_eq!(
            StoreLocation::parse("dir://chunks/here").unwrap(),
            StoreLocation::Dir(PathBuf::from("chunks/here"))
        );
        assert!(StoreLocation::parse("dir://").is_err());
    }

    #[test]
    fn zdb_defaults_port_and_namespace() {
        let c = zdb("zdb://example.org");
        assert_eq!(
            c.endpoint,
            Endpoint::Tcp {
                host: "example.org".into(),
                port: 9900
            }
        );
        assert_eq!(c.namespace, "default");
        assert_eq!(c.password, None);
        assert_eq!(c.public_url(), "zdb://example.org:9900/default");
    }

    #[test]
    fn zdb_with_password_port_namespace_and_options() {
        let c = zdb(
            "zdb://user:s%40cret@10.0.0.1:9901/chunks?secure=1&timeout_ms=250&pool=3&retries=0&window=5",
        );
        assert_eq!(
            c.endpoint,
            Endpoint::Tcp {
                host: "10.0.0.1".into(),
                port: 9901
            }
        );
        assert_eq!(c.namespace, "chunks");
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert!(c.secure_auth);
        assert_eq!(c.io_timeout, Duration::from_millis(250));
        assert_eq!(c.pool_size, 3);
        assert_eq!(c.retries, 0);
        assert_eq!(c.pipeline_window, 5);
        assert_eq!(c.public_url(), "zdb://10.0.0.1:9901/chunks");
        assert!(
            !format!("{c:?}").contains("s@cret"),
            "Debug must not show the password"
        );
    }

    #[test]
    fn zdb_ipv6_host() {
        let c = zdb("zdb://[::1]:7000/ns1");
        assert_eq!(
            c.endpoint,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 7000
            }
        );
        assert_eq!(c.public_url(), "zdb://[::1]:7000/ns1");
    }

    #[test]
    fn zdb_unix_socket() {
        let c = zdb("zdb+unix:///run/zdb.sock?ns=pub&password=pw&admin=adm");
        assert_eq!(c.endpoint, Endpoint::Unix(PathBuf::from("/run/zdb.sock")));
        assert_eq!(c.namespace, "pub");
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.admin_password.as_deref(), Some("adm"));
        assert_eq!(c.public_url(), "zdb+unix:///run/zdb.sock?ns=pub");
    }

    #[test]
    fn s3_urls_parse_into_s3_locations() {
        match StoreLocation::parse(
            "s3://bucket/images?endpoint=http://127.0.0.1:8333&region=us-east-1&path_style=true",
        ) {
            Ok(StoreLocation::S3(c)) => {
                assert_eq!(c.bucket, "bucket");
                assert_eq!(c.prefix, "images");
                assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
                assert_eq!(c.path_style, Some(true));
            }
            other => panic!("expected an s3 location, got {other:?}"),
        }
    }

    #[test]
    fn bad_urls_are_rejected_without_leaking_passwords() {
        for bad in [
            "zdb://",
            "zdb://h/a/b",
            "zdb://h:notaport/x",
            "zdb://h/x?bogus=1",
            "zdb://:pw@h/x?timeout_ms=abc",
            "zdb+unix://host/sock",
            "zdb+unix://",
            "s3://",
            "s3://ab?access_key_id=pw&secret_access_key=pw",
            "s3://bucket?secret_access_key=pw",
            "nonsense",
        ] {
            match StoreLocation::parse(bad) {
                Err(StoreError::InvalidUrl { url, .. }) => assert!(!url.contains("pw"), "{url}"),
                other => panic!("{bad}: expected InvalidUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(redact_url("zdb://u:pw@h:1/ns"), "zdb://u:***@h:1/ns");
        assert_eq!(
            redact_url("zdb+unix:///s?ns=a&password=pw"),
            "zdb+unix:///s?ns=a&password=***"
        );
        assert!(!redact_url("zdb://u:pw@[bad/ns").contains("pw"));
        let s3 = redact_url(
            "s3://b/p?endpoint=http://h:1&access_key_id=AKID&secret_access_key=SK&session_token=TK",
        );
        assert!(
            !s3.contains("AKID") && !s3.contains("SK") && !s3.contains("TK"),
            "{s3}"
        );
        assert!(s3.contains("endpoint="), "{s3}");
        assert!(!redact_url("s3://AKID:SK@bucket").contains("AKID"));
    }
}
