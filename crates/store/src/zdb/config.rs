//! Where a 0-db server is and how to talk to it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The port 0-db listens on by default.
pub const DEFAULT_PORT: u16 = 9900;

/// The namespace every connection starts in.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Most keys one MGET may carry (0-db accepts at most 1024 arguments per command).
pub const MAX_MGET_KEYS: usize = 1023;

/// Largest payload 0-db accepts in one SET (larger ones are refused and the client is dropped).
pub const MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// Longest key 0-db accepts.
pub const MAX_KEY_LEN: usize = 255;

/// How to reach a 0-db server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP; `host` is a name or an IP address (IPv6 without brackets).
    Tcp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix domain socket (0-db's `--socket`).
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Everything the 0-db client needs: endpoint, namespace, credentials, timeouts, pool and retry policy.
#[derive(Clone, PartialEq, Eq)]
pub struct ZdbConfig {
    /// The server.
    pub endpoint: Endpoint,
    /// Namespace selected after connecting.
    pub namespace: String,
    /// Namespace password, sent with SELECT.
    pub password: Option<String>,
    /// Send the namespace (and admin) password as `SECURE sha1("challenge:password")` after
    /// `AUTH SECURE CHALLENGE` instead of in clear text.
    pub secure_auth: bool,
    /// Admin password, sent with AUTH right after connecting.
    pub admin_password: Option<String>,
    /// Time allowed for establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for one read or write on an established connection.
    pub io_timeout: Duration,
    /// Idle connections kept for reuse.
    pub pool_size: usize,
    /// Retries after a transient (connection or timeout) failure; server error replies are never retried.
    pub retries: u32,
    /// Pause before the first retry; doubled for each further retry (capped at one second).
    pub retry_backoff: Duration,
    /// Commands kept in flight on one connection while pipelining (SET, raw pipelines); value fetches
    /// adapt their window to the value size, up to this many requests.
    pub pipeline_window: usize,
}

impl ZdbConfig {
    /// A configuration with default timeouts, pool and retry settings and no passwords.
    pub fn new(endpoint: Endpoint, namespace: impl Into<String>) -> Self {
        ZdbConfig {
            endpoint,
            namespace: namespace.into(),
            password: None,
            secure_auth: false,
            admin_password: None,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            pool_size: 8,
            retries: 3,
            retry_backoff: Duration::from_millis(50),
            pipeline_window: 64,
        }
    }

    /// A TCP configuration for `host:port` and `namespace`.
    pub fn tcp(host: impl Into<String>, port: u16, namespace: impl Into<String>) -> Self {
        Self::new(
            Endpoint::Tcp {
                host: host.into(),
                port,
            },
            namespace,
        )
    }

    /// The URL naming this namespace, without any password: `zdb://host:port/ns` or
    /// `zdb+unix:///path?ns=NAME`.
    pub fn public_url(&self) -> String {
        let namespace = percent_encoding::utf8_percent_encode(&self.namespace, URL_COMPONENT);
        match &self.endpoint {
            Endpoint::Tcp { .. } => format!("zdb://{}/{namespace}", self.endpoint),
            Endpoint::Unix(path) => format!("zdb+unix://{}?ns={namespace}", path.display()),
        }
    }
}

/// Characters escaped in a namespace placed in a URL path or query.
const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl fmt::Debug for ZdbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "***");
        f.debug_struct("ZdbConfig")
            .field("endpoint", &self.endpoint)
            .field("namespace", &self.namespace)
            .field("password", &hidden(&self.password))
            .field("secure_auth", &self.secure_auth)
            .field("admin_password", &hidden(&self.admin_password))
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("pool_size", &self.pool_size)
            .field("retries", &self.retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("pipeline_window", &self.pipeline_window)
            .finish()
    }
}
