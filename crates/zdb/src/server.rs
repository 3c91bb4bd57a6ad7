//! Start-up and shutdown: [`run`] (blocking) and [`start_background`]. A control thread binds the
//! listeners, accepts connections and answers signals and metrics scrapes; worker threads serve the
//! connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::args::{ModeArg, ServerArgs};
use crate::db::Database;
use crate::error::ZdbError;
use crate::hook::Hook;
use crate::listener::Listener;
use crate::namespace::{Mode, StoreConfig};
use crate::workers::Workers;

/// A server started by [`start_background`], running on its own threads.
pub struct RunningServer {
    tcp_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<Result<(), ZdbError>>>,
}

impl RunningServer {
    /// The TCP address it listens on (`None` when it listens on a unix socket).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The address of the metrics endpoint (`--metrics`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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
    Database::open(
        cfg,
        args.admin.clone(),
        args.protect,
        args.maxsize,
        worker_count(args),
    )
}

/// `args` with `--port 0` replaced by the port the listener got, so the server names itself (hooks) by
/// the address clients really use.
fn with_bound_port(mut args: ServerArgs, listener: &Listener) -> ServerArgs {
    if let Some(addr) = listener.tcp_addr() {
        if args.port == 0 {
            args.port = addr.port();
        }
    }
    args
}

/// The runtime of the thread that accepts connections and answers signals and metrics scrapes.
fn control_runtime() -> Result<tokio::runtime::Runtime, ZdbError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ZdbError::io("start the async runtime", e))
}

/// Worker threads `args` asks for: `--threads`, else one per CPU.
pub fn worker_count(args: &ServerArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// A bound, opened server, ready to accept.
struct Ready {
    db: Arc<Database>,
    listener: Listener,
    metrics: Option<tokio::net::TcpListener>,
    workers: Workers,
}

impl Ready {
    /// Binds the listeners, opens the database and starts the workers (in the control runtime).
    async fn prepare(args: ServerArgs) -> Result<Self, ZdbError> {
        warn_no_admin(&args);
        let listener = Listener::bind(&args).await?;
        let args = with_bound_port(args, &listener);
        let metrics = match args.metrics {
            Some(addr) => Some(crate::metrics_http::bind(addr).await?),
            None => None,
        };
        let db = open_database(&args)?;
        let workers = Workers::start(worker_count(&args))?;
        Ok(Ready {
            db,
            listener,
            metrics,
            workers,
        })
    }

    /// Serves until `shutdown` fires, then stops the workers and flushes the files.
    async fn serve(self, shutdown: watch::Receiver<bool>) {
        let Ready {
            db,
            listener,
            metrics,
            mut workers,
        } = self;
        if let Some(l) = metrics {
            tokio::spawn(crate::metrics_http::serve(l, db.clone(), shutdown.clone()));
        }
        listener
            .accept_loop(db.clone(), &mut workers, shutdown)
            .await;
        workers.stop();
        db.sync_all();
    }

    fn log_listening(&self) {
        match &self.listener {
            Listener::Tcp(_) => {
                if let Some(a) = self.listener.tcp_addr() {
                    tracing::info!("listening on {a}");
                }
            }
            Listener::Unix(_, p) => tracing::info!("listening on unix socket {}", p.display()),
        }
        if let Some(Ok(a)) = self.metrics.as_ref().map(|l| l.local_addr()) {
            tracing::info!("metrics on http://{a}/metrics");
        }
    }
}

fn warn_no_admin(args: &ServerArgs) {
    if args.admin.is_none() {
        tracing::warn!(
            "no --admin password: every client is admin (can create, delete and change namespaces)"
        );
    }
}

/// Starts the server on its own threads and returns once it accepts connections.
pub fn start_background(args: ServerArgs) -> Result<RunningServer, ZdbError> {
    type ReadyMsg = Result<(Option<SocketAddr>, Option<SocketAddr>), ZdbError>;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<ReadyMsg>();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let unix_path = args.socket.clone();
    let thread = std::thread::Builder::new()
        .name("zdb-server".into())
        .spawn(move || -> Result<(), ZdbError> {
            let fail = |e: ZdbError| {
                let _ = ready_tx.send(Err(ZdbError::Thread(e.to_string())));
                Err(e)
            };
            let rt = match control_runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            rt.block_on(async {
                let ready = match Ready::prepare(args).await {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
                let metrics_addr = ready.metrics.as_ref().and_then(|l| l.local_addr().ok());
                let _ = ready_tx.send(Ok((ready.listener.tcp_addr(), metrics_addr)));
                ready.serve(shutdown_rx).await;
                Ok(())
            })
        })
        .map_err(|e| ZdbError::Thread(e.to_string()))?;
    match ready_rx.recv() {
        Ok(Ok((tcp_addr, metrics_addr))) => Ok(RunningServer {
            tcp_addr,
            metrics_addr,
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
    let rt = control_runtime()?;
    rt.block_on(async move {
        // Signal handlers go in before the server says it is listening, so a
        // SIGTERM sent right after "listening on" always stops it cleanly.
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| ZdbError::io("install SIGTERM handler", e))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| ZdbError::io("install SIGINT handler", e))?;
        let ready = Ready::prepare(args).await?;
        ready.log_listening();
        let db = ready.db.clone();
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
        let server = tokio::spawn(ready.serve(rx));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal: stopping, flushing files");
        let _ = tx.send(true);
        let _ = server.await;
        if let Some(h) = &db.cfg.hook {
            h.fire_and_wait("close");
        }
        Ok(())
    })
}
