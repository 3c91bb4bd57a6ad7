//! `s3://` URLs: the settings they carry, what the `AWS_*` environment adds, the URL recorded in images,
//! and the `object_store` client built from them.

use std::fmt;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use url::Url;

/// The region used when neither the URL nor `AWS_REGION` / `AWS_DEFAULT_REGION` names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Requests in flight at once in batch calls, unless the URL says `parallel=N`.
pub const DEFAULT_PARALLEL: usize = 32;
/// Query options that carry credentials: never shown in public URLs, messages or logs.
pub(crate) const SECRET_OPTIONS: [&str; 3] =
    ["access_key_id", "secret_access_key", "session_token"];

/// The settings an `s3://` URL carries. Credentials and region may also come from the environment when
/// the store is opened (see [`S3Store::new`]).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (empty: objects at the bucket's top level).
    pub prefix: String,
    /// The S3 endpoint URL (`http://` or `https://`); `None`: AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The signing region; `None`: `AWS_REGION`, `AWS_DEFAULT_REGION`, then [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// Path-style (`ENDPOINT/BUCKET/KEY`) rather than virtual-hosted (`BUCKET.ENDPOINT/KEY`) requests;
    /// `None`: path-style with a custom endpoint, virtual-hosted on AWS.
    pub path_style: Option<bool>,
    /// The access key id (`None`: from `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The secret access key (`None`: from `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials (`None`: from `AWS_SESSION_TOKEN`).
    pub session_token: Option<String>,
    /// Send unsigned requests (public buckets), ignoring any credentials.
    pub anonymous: bool,
    /// Time allowed for one request, including reading the body.
    pub timeout: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Retries of a failed request (5xx, throttling, connection errors, timeouts), with exponential
    /// backoff.
    pub retries: usize,
    /// Requests in flight at once in batch calls.
    pub parallel: usize,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &hidden(&self.access_key_id))
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("anonymous", &self.anonymous)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retries", &self.retries)
            .field("parallel", &self.parallel)
            .finish()
    }
}

impl S3Config {
    /// A configuration for `bucket` with every option at its default.
    pub fn new(bucket: &str) -> Self {
        S3Config {
            bucket: bucket.to_string(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            anonymous: false,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            parallel: DEFAULT_PARALLEL,
        }
    }

    /// Parses `s3://BUCKET[/PREFIX][?option=value&…]`; `Err` holds the reason (without secrets).
    pub(crate) fn parse(url: &Url) -> Result<Self, String> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials go in access_key_id=/secret_access_key= options or the \
                        AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables, not before the bucket"
                .into());
        }
        if url.port().is_some() {
            return Err(
                "s3://BUCKET takes no port: the server goes in endpoint=http://host:port".into(),
            );
        }
        let bucket = url.host_str().unwrap_or_default();
        check_bucket_name(bucket)?;
        let mut config = S3Config::new(bucket);
        let prefix = url.path().trim_matches('/');
        if !prefix.is_empty() {
            let decoded = percent_encoding::percent_decode_str(prefix)
                .decode_utf8()
                .map_err(|_| "the prefix is not valid UTF-8 after percent-decoding".to_string())?;
            ObjectPath::parse(decoded.as_ref())
                .map_err(|e| format!("invalid key prefix {decoded:?}: {e}"))?;
            config.prefix = decoded.into_owned();
        }
        for (key, value) in url.query_pairs() {
            let non_empty = || {
                if value.is_empty() {
                    Err(format!("option {key}= must not be empty"))
                } else {
                    Ok(value.clone().into_owned())
                }
            };
            match key.as_ref() {
                "endpoint" => config.endpoint = Some(check_endpoint(&value)?),
                "region" => config.region = Some(non_empty()?),
                "path_style" => config.path_style = Some(parse_bool(&key, &value)?),
                "access_key_id" => config.access_key_id = Some(non_empty()?),
                "secret_access_key" => config.secret_access_key = Some(non_empty()?),
                "session_token" => config.session_token = Some(non_empty()?),
                "anonymous" => config.anonymous = parse_bool(&key, &value)?,
                "timeout_ms" => config.timeout = Duration::from_millis(positive(&key, &value)?),
                "connect_timeout_ms" => {
                    config.connect_timeout = Duration::from_millis(positive(&key, &value)?)
                }
                "retries" => {
                    config.retries = value
                        .parse()
                        .map_err(|_| format!("option retries={value:?} is not a number"))?
                }
                "parallel" => config.parallel = positive(&key, &value)? as usize,
                other => {
                    return Err(format!(
                        "unknown option {other:?} (s3:// options: endpoint, region, path_style, \
                         access_key_id, secret_access_key, session_token, anonymous, timeout_ms, \
                         connect_timeout_ms, retries, parallel)"
                    ))
                }
            }
        }
        if config.access_key_id.is_some() != config.secret_access_key.is_some() {
            return Err("access_key_id= and secret_access_key= go together".into());
        }
        Ok(config)
    }
}

/// S3 bucket naming rules: 3 to 63 characters, lower-case letters, digits, `.` and `-`, starting and
/// ending with a letter or digit.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let valid_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let valid_ends = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(first, last)| first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric());
    if bucket.is_empty() {
        Err("s3:// needs a bucket: s3://BUCKET[/PREFIX]?endpoint=…".into())
    } else if !(3..=63).contains(&bucket.len()) || !valid_chars || !valid_ends {
        Err(format!(
            "invalid bucket name {bucket:?} (3-63 characters: a-z, 0-9, '.', '-')"
        ))
    } else {
        Ok(())
    }
}

fn check_endpoint(value: &str) -> Result<String, String> {
    let parsed = Url::parse(value).map_err(|e| format!("endpoint={value:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "endpoint={value:?} must be an http:// or https:// URL"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        return Err("endpoint= takes no credentials and no query".into());
    }
    Ok(value.trim_end_matches('/').to_string())
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" | "on" | "" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("option {key}={value:?} is not a boolean")),
    }
}

fn positive(key: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .ok()
        .filter(|&n: &u64| n > 0)
        .ok_or_else(|| format!("option {key}={value:?} is not a positive number"))
}

/// Settings after the environment was consulted.
#[derive(Clone)]
pub(super) struct Resolved {
    pub(super) endpoint: Option<String>,
    pub(super) region: String,
    pub(super) path_style: bool,
    pub(super) access_key_id: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) session_token: Option<String>,
    pub(super) anonymous: bool,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Resolved {
    pub(super) fn from(config: &S3Config) -> Result<Self, String> {
        let endpoint = match &config.endpoint {
            Some(e) => Some(e.clone()),
            None => match env_var("AWS_ENDPOINT_URL_S3").or_else(|| env_var("AWS_ENDPOINT_URL")) {
                Some(e) => Some(check_endpoint(&e).map_err(|r| format!("AWS_ENDPOINT_URL: {r}"))?),
                None => None,
            },
        };
        let region = config
            .region
            .clone()
            .or_else(|| env_var("AWS_REGION"))
            .or_else(|| env_var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let path_style = config.path_style.unwrap_or(endpoint.is_some());
        let (access_key_id, secret_access_key, session_token) = if config.anonymous {
            (None, None, None)
        } else if config.access_key_id.is_some() {
            (
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
                config.session_token.clone(),
            )
        } else {
            (
                env_var("AWS_ACCESS_KEY_ID"),
                env_var("AWS_SECRET_ACCESS_KEY"),
                config
                    .session_token
                    .clone()
                    .or_else(|| env_var("AWS_SESSION_TOKEN")),
            )
        };
        if access_key_id.is_some() != secret_access_key.is_some() {
            return Err(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together".to_string(),
            );
        }
        // Without static keys, object_store's other providers (web identity, container) apply when
        // their variables are set; otherwise requests are unsigned rather than waiting on an EC2
        // metadata endpoint that usually is not there.
        let provider_in_env = [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        ]
        .iter()
        .any(|v| env_var(v).is_some());
        let anonymous = config.anonymous || (access_key_id.is_none() && !provider_in_env);
        Ok(Resolved {
            endpoint,
            region,
            path_style,
            access_key_id,
            secret_access_key,
            session_token,
            anonymous,
        })
    }

    /// The endpoint requests go to (with the bucket as a sub-domain for virtual-hosted requests).
    pub(super) fn bucket_endpoint(&self, bucket: &str) -> Option<String> {
        let endpoint = self.endpoint.as_ref()?;
        if self.path_style {
            return Some(endpoint.clone());
        }
        let mut url = Url::parse(endpoint).ok()?;
        let host = url.host_str()?.to_string();
        if !host.starts_with(&format!("{bucket}.")) {
            url.set_host(Some(&format!("{bucket}.{host}"))).ok()?;
        }
        Some(url.as_str().trim_end_matches('/').to_string())
    }
}

/// The client for `config` as `resolved`, and the credentials to scrub from error messages; `Err` holds
/// the reason (without secrets).
pub(super) fn build_client(
    config: &S3Config,
    resolved: &Resolved,
) -> Result<(AmazonS3, Vec<String>), String> {
    let mut client_options = ClientOptions::new()
        .with_timeout(config.timeout)
        .with_connect_timeout(config.connect_timeout)
        .with_pool_max_idle_per_host(config.parallel.max(4));
    if resolved
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        client_options = client_options.with_allow_http(true);
    }
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: config.retries,
        retry_timeout: Duration::from_secs(120),
    };
    let mut builder = builder_from_other_env_settings()
        .with_bucket_name(&config.bucket)
        .with_region(&resolved.region)
        .with_virtual_hosted_style_request(!resolved.path_style)
        .with_client_options(client_options)
        .with_retry(retry)
        .with_skip_signature(resolved.anonymous);
    if let Some(endpoint) = resolved.bucket_endpoint(&config.bucket) {
        builder = builder
            .with_endpoint(&endpoint)
            .with_config(AmazonS3ConfigKey::S3Endpoint, &endpoint);
    }
    let mut secrets = Vec::new();
    if let (Some(key), Some(secret)) = (&resolved.access_key_id, &resolved.secret_access_key) {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret);
        secrets.push(key.clone());
        secrets.push(secret.clone());
        if let Some(token) = &resolved.session_token {
            builder = builder.with_token(token);
            secrets.push(token.clone());
        }
    }
    let client = builder
        .build()
        .map_err(|e| super::errors::scrub(&e.to_string(), &secrets))?;
    Ok((client, secrets))
}

/// A builder with the `AWS_*` environment settings this store does not resolve itself (credential
/// providers such as web identity or container credentials, request payer, checksums, …), as
/// `AmazonS3Builder::from_env` reads them. Credentials, session token, region, endpoint, addressing
/// and signing are left out: [`Resolved`] decides those, so a URL's keys never travel with a session
/// token from the environment.
fn builder_from_other_env_settings() -> AmazonS3Builder {
    let resolved_here = [
        AmazonS3ConfigKey::AccessKeyId,
        AmazonS3ConfigKey::SecretAccessKey,
        AmazonS3ConfigKey::Token,
        AmazonS3ConfigKey::Region,
        AmazonS3ConfigKey::DefaultRegion,
        AmazonS3ConfigKey::Endpoint,
        AmazonS3ConfigKey::S3Endpoint,
        AmazonS3ConfigKey::VirtualHostedStyleRequest,
        AmazonS3ConfigKey::SkipSignature,
        AmazonS3ConfigKey::Bucket,
    ];
    std::env::vars()
        .filter(|(name, _)| name.starts_with("AWS_"))
        .filter_map(|(name, value)| {
            let key: AmazonS3ConfigKey = name.to_ascii_lowercase().parse().ok()?;
            (!resolved_here.contains(&key)).then_some((key, value))
        })
        .fold(AmazonS3Builder::new(), |builder, (key, value)| {
            builder.with_config(key, value)
        })
}

/// The `s3://` URL recorded in images: bucket, prefix, endpoint, region and addressing, never
/// credentials or tuning options. With `resolved`, what the environment supplied is written out too.
pub(super) fn public_url_of(config: &S3Config, resolved: Option<&Resolved>) -> String {
    let mut url = format!("s3://{}", config.bucket);
    if !config.prefix.is_empty() {
        url.push('/');
        url.push_str(&config.prefix);
    }
    let endpoint = resolved.map_or(config.endpoint.as_ref(), |r| r.endpoint.as_ref());
    let region = resolved.map_or(config.region.as_ref(), |r| Some(&r.region));
    let path_style = resolved.map_or(config.path_style, |r| Some(r.path_style));
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(endpoint) = endpoint {
        query.append_pair("endpoint", endpoint);
    }
    if let Some(region) = region {
        query.append_pair("region", region);
    }
    if let Some(path_style) = path_style {
        query.append_pair("path_style", if path_style { "true" } else { "false" });
    }
    if config.anonymous {
        query.append_pair("anonymous", "true");
    }
    let query = query.finish();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<S3Config, String> {
        S3Config::parse(&Url::parse(url).map_err(|e| e.to_string())?)
    }

    #[test]
    fn parses_bucket_prefix_and_options() {
        let c = parse(
            "s3://chunks.example/images/v1/?endpoint=http://127.0.0.1:8333/&region=eu-west-1\
             &path_style=false&access_key_id=AK&secret_access_key=S%2Fx&session_token=T\
             &timeout_ms=1500&connect_timeout_ms=200&retries=0&parallel=8",
        )
        .unwrap();
        assert_eq!(c.bucket, "chunks.example");
        assert_eq!(c.prefix, "images/v1");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.path_style, Some(false));
        assert_eq!(c.access_key_id.as_deref(), Some("AK"));
        assert_eq!(c.secret_access_key.as_deref(), Some("S/x"));
        assert_eq!(c.session_token.as_deref(), Some("T"));
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.connect_timeout, Duration::from_millis(200));
        assert_eq!(c.retries, 0);
        assert_eq!(c.parallel, 8);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("S/x") && !debug.contains("\"AK\""),
            "{debug}"
        );
    }

    #[test]
    fn defaults() {
        let c = parse("s3://bucket").unwrap();
        assert_eq!(c, S3Config::new("bucket"));
        assert_eq!(c.parallel, DEFAULT_PARALLEL);
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "s3://",
            "s3://B",
            "s3://ab",
            "s3://-bucket",
            "s3://bucket_x",
            "s3://key:secret@bucket",
            "s3://bucket:9000",
            "s3://bucket?endpoint=ftp://x",
            "s3://bucket?endpoint=notaurl",
            "s3://bucket?access_key_id=a",
            "s3://bucket?bogus=1",
            "s3://bucket?parallel=0",
            "s3://bucket?path_style=maybe",
            "s3://bucket/a//b",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn public_url_keeps_location_and_drops_credentials() {
        let c = parse(
            "s3://bucket/p?endpoint=http://h:1&region=r&access_key_id=AK&secret_access_key=SK&parallel=4",
        )
        .unwrap();
        let url = public_url_of(&c, None);
        assert_eq!(url, "s3://bucket/p?endpoint=http%3A%2F%2Fh%3A1&region=r");
        let reparsed = parse(&url).unwrap();
        assert_eq!(reparsed.endpoint.as_deref(), Some("http://h:1"));
        assert_eq!(reparsed.region.as_deref(), Some("r"));
    }

    #[test]
    fn virtual_hosted_endpoint_puts_the_bucket_in_the_host() {
        let mut c = parse("s3://bucket?endpoint=http://s3.local:9000&path_style=false").unwrap();
        c.access_key_id = Some("a".into());
        c.secret_access_key = Some("b".into());
        let r = Resolved::from(&c).unwrap();
        assert_eq!(
            r.bucket_endpoint("bucket").as_deref(),
            Some("http://bucket.s3.local:9000")
        );
        let c = parse("s3://bucket?endpoint=http://s3.local:9000").unwrap();
        let r = Resolved::from(&c).unwrap();
        assert!(r.path_style);
        assert_eq!(
            r.bucket_endpoint("bucket").as_deref(),
            Some("http://s3.local:9000")
        );
    }
}
