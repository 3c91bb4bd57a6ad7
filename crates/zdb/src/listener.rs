//! The TCP or unix-socket listener and the accept loop, which hands each connection to a worker.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::args::ServerArgs;
use crate::db::Database;
use crate::error::ZdbError;
use crate::workers::Workers;

/// Where the server listens.
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A unix socket, removed when the server stops.
    Unix(UnixListener, PathBuf),
}

/// An accepted connection, detached from the accepting event loop so a worker's loop can take it.
pub enum Conn {
    /// A TCP client.
    Tcp(std::net::TcpStream),
    /// A unix-socket client.
    Unix(std::os::unix::net::UnixStream),
}

impl Conn {
    /// Registers the connection with the current event loop and serves it.
    pub async fn serve(self, db: &Arc<Database>) {
        match self {
            Conn::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
                Ok(s) => crate::connection::serve(db, s).await,
                Err(e) => tracing::warn!("cannot register a connection: {e}"),
            },
            Conn::Unix(s) => match tokio::net::UnixStream::from_std(s) {
                Ok(s) => crate::connection::serve(db, s).await,
                Err(e) => tracing::warn!("cannot register a connection: {e}"),
            },
        }
    }
}

impl Listener {
    /// Binds the socket `args` names.
    pub async fn bind(args: &ServerArgs) -> Result<Self, ZdbError> {
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

    /// The TCP address, if it is a TCP listener.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Accepts connections and hands them to `workers` until `shutdown` fires; then removes a unix
    /// socket file.
    pub async fn accept_loop(
        self,
        db: Arc<Database>,
        workers: &mut Workers,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                conn = self.accept() => {
                    if let Some(conn) = conn {
                        workers.serve(&db, conn);
                    }
                }
            }
        }
        if let Listener::Unix(_, path) = &self {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn accept(&self) -> Option<Conn> {
        let conn = match self {
            Listener::Tcp(l) => l.accept().await.and_then(|(s, _)| {
                s.set_nodelay(true)?;
                s.into_std().map(Conn::Tcp)
            }),
            Listener::Unix(l, _) => l
                .accept()
                .await
                .and_then(|(s, _)| s.into_std().map(Conn::Unix)),
        };
        match conn {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("accept: {e}");
                // Out of descriptors, typically: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                None
            }
        }
    }
}
