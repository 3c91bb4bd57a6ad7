//! Listeners, the accept loop, start-up and shutdown: [`run`] (blocking) and [`start_background`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::args::{ModeArg, ServerArgs};
use crate::db::Database;
use crate::error::ZdbError;
use crate::hook::Hook;
use crate::namespace::{Mode, StoreConfig};

/// A server started by [`start_background`], running on its own runtime thread.
pub struct RunningServer {
    tcp_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<Result<(), ZdbError>>>,
}

impl RunningServer {
    /// The TCP address it listens on (`None` when it listens on a unix socket).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The unix socket it listens on, if any.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix_path.as_deref()
    }

    /// Stops accepting, closes every connection, flushes files and waits for the server thread.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("zdb server stopped with an error: {e}"),
                Err(_) => tracing::error!("zdb server thread panicked"),
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

fn server_id(args: &ServerArgs) -> String {
    match &args.socket {
        Some(p) => format!("unix://{}", p.display()),
        None => format!("tcp://{}:{}", args.listen, args.port),
    }
}

/// Validates flags and builds the storage settings.
fn store_config(args: &ServerArgs) -> Result<Arc<StoreConfig>, ZdbError> {
    // Offsets are 32-bit: a file may pass --datasize by one entry (at most 8 MiB and a key).
    let max_datasize = u32::MAX as u64 - 16 * 1024 * 1024;
    if args.datasize == 0 || args.datasize > max_datasize {
        return Err(ZdbError::InvalidSetting(format!(
            "datasize must be between 1 and {max_datasize} bytes"
        )));
    }
    if args.protect && args.admin.is_none() {
        return Err(ZdbError::InvalidSetting(
            "protected mode only works with admin password".into(),
        ));
    }
    Ok(Arc::new(StoreConfig {
        index_root: args.index.clone(),
        data_root: args.data.clone(),
        datasize: args.datasize,
        sync: args.sync,
        synctime: args.synctime,
        fixed_mode: args.mode.map(|m| match m {
            ModeArg::User => Mode::User,
            ModeArg::Seq => Mode::Seq,
        }),
        rebuild_index: args.rebuild_index,
        hook: args.hook.clone().map(|p| Hook::new(p, server_id(args))),
    }))
}

/// Opens the database described by `args`.
pub fn open_database(args: &ServerArgs) -> Result<Arc<Database>, ZdbError> {
    let cfg = store_config(args)?;
    Database::open(cfg, args.admin.clone(), args.protect, args.maxsize)
}

async fn bind(args: &ServerArgs) -> Result<Listener, ZdbError> {
    if let Some(path) = &args.socket {
        if path.exists() {
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path)
            .map_err(|e| ZdbError::io(format!("listen on {}", path.display()), e))?;
        return Ok(Listener::Unix(l, path.clone()));
    }
    let l = TcpListener::bind((args.listen.as_str(), args.port))
        .await
        .map_err(|e| ZdbError::io(format!("listen on {}:{}", args.listen, args.port), e))?;
    Ok(Listener::Tcp(l))
}

/// `args` with `--port 0` replaced by the port the listener got, so the server names itself (hooks) by
/// the address clients really use.
fn with_bound_port(mut args: ServerArgs, listener: &Listener) -> ServerArgs {
    if let Listener::Tcp(l) = listener {
        if args.port == 0 {
            if let Ok(addr) = l.local_addr() {
                args.port = addr.port();
            }
        }
    }
    args
}

async fn accept_loop(db: Arc<Database>, listener: Listener, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            conn = accept(&listener) => {
                let Some(conn) = conn else { continue };
                db.stats.clients_lifetime.fetch_add(1, Relaxed);
                db.stats.clients_connected.fetch_add(1, Relaxed);
                let db2 = db.clone();
                let rx = shutdown.clone();
                tokio::spawn(async move {
                    match conn {
                        Conn::Tcp(s) => crate::connection::serve(db2.clone(), s, rx).await,
                        Conn::Unix(s) => crate::connection::serve(db2.clone(), s, rx).await,
                    }
                    db2.stats.clients_connected.fetch_sub(1, Relaxed);
                });
            }
        }
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> Option<Conn> {
    match listener {
        Listener::Tcp(l) => match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                Some(Conn::Tcp(s))
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                None
            }
        },
        Listener::Unix(l, _) => match l.accept().await {
            Ok((s, _)) => Some(Conn::Unix(s)),
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                None
            }
        },
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ZdbError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("zdb-worker")
        .build()
        .map_err(|e| ZdbError::io("start the async runtime", e))
}

fn warn_no_admin(args: &ServerArgs) {
    if args.admin.is_none() {
        tracing::warn!(
            "no --admin password: every client is admin (can create, delete and change namespaces)"
        );
    }
}

/// Starts the server on its own runtime thread and returns once it accepts connections.
pub fn start_background(args: ServerArgs) -> Result<RunningServer, ZdbError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Option<SocketAddr>, ZdbError>>();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let unix_path = args.socket.clone();
    let thread = std::thread::Builder::new()
        .name("zdb-server".into())
        .spawn(move || -> Result<(), ZdbError> {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(ZdbError::Thread(e.to_string())));
                    return Err(e);
                }
            };
            rt.block_on(async move {
                warn_no_admin(&args);
                let listener = match bind(&args).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ZdbError::Thread(e.to_string())));
                        return Err(e);
                    }
                };
                let args = with_bound_port(args, &listener);
                let db = match open_database(&args) {
                    Ok(db) => db,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ZdbError::Thread(e.to_string())));
                        return Err(e);
                    }
                };
                let addr = match &listener {
                    Listener::Tcp(l) => l.local_addr().ok(),
                    Listener::Unix(..) => None,
                };
                let _ = ready_tx.send(Ok(addr));
                accept_loop(db.clone(), listener, shutdown_rx).await;
                db.sync_all();
                Ok(())
            })
        })
        .map_err(|e| ZdbError::Thread(e.to_string()))?;
    match ready_rx.recv() {
        Ok(Ok(tcp_addr)) => Ok(RunningServer {
            tcp_addr,
            unix_path,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(ZdbError::Thread(
                "server thread exited before it was ready".into(),
            ))
        }
    }
}

/// Prints every live key of every namespace (`--dump`).
fn dump(args: &ServerArgs) -> Result<(), ZdbError> {
    let db = open_database(args)?;
    for ns in db.all() {
        let (entries, size) = ns.stats();
        println!(
            "[+] namespace {}: {entries} keys, {size} bytes, mode {}",
            ns.name,
            ns.settings().mode.name()
        );
        for r in ns.dump() {
            println!(
                "[+]   key {} (file {} offset {}) length {} timestamp {} crc {:08x}",
                hex::encode(&r.record.key),
                r.record.dataid,
                r.record.offset,
                r.record.length,
                r.record.timestamp,
                r.record.crc
            );
        }
    }
    Ok(())
}

/// Forks into the background; the parent exits when the child reports it is ready. Returns the write end of
/// the readiness pipe (in the child).
fn daemonize(args: &ServerArgs) -> Result<i32, ZdbError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe/fork/setsid/dup2 on descriptors we own, before any thread is started.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return Err(ZdbError::io("pipe", std::io::Error::last_os_error()));
        }
        match libc::fork() {
            -1 => Err(ZdbError::io("fork", std::io::Error::last_os_error())),
            0 => {
                libc::close(fds[0]);
                libc::setsid();
                let target = match &args.logfile {
                    Some(p) => std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p),
                    None => std::fs::OpenOptions::new().write(true).open("/dev/null"),
                };
                if let Ok(f) = target {
                    use std::os::fd::AsRawFd;
                    libc::dup2(f.as_raw_fd(), 1);
                    libc::dup2(f.as_raw_fd(), 2);
                }
                Ok(fds[1])
            }
            _child => {
                libc::close(fds[1]);
                let mut b = [0u8; 1];
                let n = libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(if n == 1 { 0 } else { 1 });
            }
        }
    }
}

/// Runs the server until SIGTERM or SIGINT (blocking). Handles `--dump` and `--background`.
pub fn run(args: ServerArgs) -> Result<(), ZdbError> {
    if args.dump {
        return dump(&args);
    }
    store_config(&args)?;
    let ready_fd = if args.background {
        Some(daemonize(&args)?)
    } else {
        None
    };
    let rt = runtime()?;
    rt.block_on(async move {
        // Signal handlers go in before the server says it is listening, so a
        // SIGTERM sent right after "listening on" always stops it cleanly.
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| ZdbError::io("install SIGTERM handler", e))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| ZdbError::io("install SIGINT handler", e))?;
        warn_no_admin(&args);
        let listener = bind(&args).await?;
        let args = with_bound_port(args, &listener);
        let db = open_database(&args)?;
        match &listener {
            Listener::Tcp(l) => {
                if let Ok(a) = l.local_addr() {
                    tracing::info!("listening on {a}");
                }
            }
            Listener::Unix(_, p) => tracing::info!("listening on unix socket {}", p.display()),
        }
        if let Some(h) = &db.cfg.hook {
            h.fire("ready", &[]);
        }
        if let Some(fd) = ready_fd {
            // SAFETY: writing one byte to the pipe we created, then closing it.
            unsafe {
                libc::write(fd, b"1".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(accept_loop(db.clone(), listener, rx));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal: stopping, flushing files");
        let _ = tx.send(true);
        let _ = server.await;
        db.sync_all();
        if let Some(h) = &db.cfg.hook {
            h.fire_and_wait("close");
        }
        Ok(())
    })
}
