//! The database: every namespace of a server, shared settings, statistics and WAIT events.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use crate::error::ZdbError;
use crate::metrics::Metrics;
use crate::namespace::{Namespace, StoreConfig, DEFAULT_NAMESPACE};

/// A command executed in a namespace, delivered to clients blocked in WAIT.
#[derive(Debug, Clone)]
pub struct Event {
    /// Namespace the command ran in.
    pub namespace: Arc<str>,
    /// Upper-case command name.
    pub command: &'static str,
}

/// Every namespace of a server plus server-wide settings.
pub struct Database {
    /// Storage settings shared by all namespaces.
    pub cfg: Arc<StoreConfig>,
    namespaces: RwLock<BTreeMap<String, Arc<Namespace>>>,
    /// Admin password (`--admin`); `None`: every client is admin.
    pub admin_password: Option<String>,
    /// `--protect`: the default namespace needs the admin password to be writable.
    pub protect: bool,
    events: tokio::sync::broadcast::Sender<Event>,
    waiters: AtomicUsize,
    /// Counters (INFO, `--metrics`).
    pub metrics: Metrics,
    /// When the server started.
    pub started: Instant,
    /// Unix time the server started.
    pub boot_time: u64,
    /// Random id of this server instance.
    pub instance_id: u32,
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains(['/', '\0', '\\'])
        && name.bytes().all(|b| b.is_ascii_graphic())
}

impl Database {
    /// Opens every namespace found under the index and data roots, creating `default` if needed; the
    /// counters are sharded for `workers` worker threads.
    pub fn open(
        cfg: Arc<StoreConfig>,
        admin_password: Option<String>,
        protect: bool,
        default_maxsize: u64,
        workers: usize,
    ) -> Result<Arc<Self>, ZdbError> {
        for d in [&cfg.index_root, &cfg.data_root] {
            if let Err(e) = fs::create_dir_all(d) {
                if !d.is_dir() {
                    return Err(ZdbError::io(format!("create {}", d.display()), e));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for root in [&cfg.index_root, &cfg.data_root] {
            if let Ok(rd) = fs::read_dir(root) {
                for ent in rd.flatten() {
                    if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        if let Some(n) = ent.file_name().to_str() {
                            if is_valid_name(n) {
                                names.insert(n.to_string());
                            }
                        }
                    }
                }
            }
        }
        names.insert(DEFAULT_NAMESPACE.to_string());
        let mut map = BTreeMap::new();
        for name in names {
            let ns = Namespace::open(&name, cfg.clone(), true)?;
            let (keys, size) = ns.stats();
            tracing::info!(namespace = %name, keys, bytes = size, mode = ns.settings().mode.name(), "namespace loaded");
            map.insert(name, ns);
        }
        if let Some(def) = map.get(DEFAULT_NAMESPACE) {
            if protect {
                def.set_runtime_password(admin_password.clone());
            }
            if default_maxsize > 0 {
                def.set_runtime_maxsize(default_maxsize);
            }
        }
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(Arc::new(Database {
            cfg,
            namespaces: RwLock::new(map),
            admin_password,
            protect,
            events,
            waiters: AtomicUsize::new(0),
            metrics: Metrics::new(workers),
            started: Instant::now(),
            boot_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            instance_id: rand::random(),
        }))
    }

    /// The namespace called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.read().get(name).cloned()
    }

    /// The default namespace.
    pub fn default_namespace(&self) -> Option<Arc<Namespace>> {
        self.get(DEFAULT_NAMESPACE)
    }

    /// Names of all namespaces, sorted.
    pub fn names(&self) -> Vec<String> {
        self.namespaces.read().keys().cloned().collect()
    }

    /// All namespaces.
    pub fn all(&self) -> Vec<Arc<Namespace>> {
        self.namespaces.read().values().cloned().collect()
    }

    /// Whether `name` is acceptable for a namespace.
    pub fn valid_name(name: &str) -> bool {
        is_valid_name(name)
    }

    /// Creates namespace `name`; `Ok(false)` when it already exists.
    pub fn create(&self, name: &str) -> Result<bool, ZdbError> {
        let mut map = self.namespaces.write();
        if map.contains_key(name) {
            return Ok(false);
        }
        let ns = Namespace::open(name, self.cfg.clone(), true)?;
        map.insert(name.to_string(), ns);
        drop(map);
        if let Some(h) = &self.cfg.hook {
            h.fire("namespace-created", &[name]);
        }
        Ok(true)
    }

    /// Removes namespace `name` and its files; `Ok(false)` when it does not exist.
    pub fn remove(&self, name: &str) -> Result<bool, ZdbError> {
        let ns = {
            let mut map = self.namespaces.write();
            match map.remove(name) {
                Some(ns) => ns,
                None => return Ok(false),
            }
        };
        ns.remove()?;
        if let Some(h) = &self.cfg.hook {
            h.fire("namespace-deleted", &[name]);
        }
        Ok(true)
    }

    /// Flushes every namespace's files to disk.
    pub fn sync_all(&self) {
        for ns in self.all() {
            ns.sync_all();
        }
    }

    /// Subscribes to command events (WAIT); the returned guard counts the waiter.
    pub fn subscribe(self: &Arc<Self>) -> (tokio::sync::broadcast::Receiver<Event>, WaiterGuard) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        (self.events.subscribe(), WaiterGuard { db: self.clone() })
    }

    /// Publishes a command event when some client waits.
    pub fn notify(&self, namespace: &str, command: &'static str) {
        if self.waiters.load(Ordering::Relaxed) > 0 {
            let _ = self.events.send(Event {
                namespace: namespace.into(),
                command,
            });
        }
    }
}

/// Counts a client blocked in WAIT while alive.
pub struct WaiterGuard {
    db: Arc<Database>,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.db.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}
