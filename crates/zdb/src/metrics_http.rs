//! `--metrics ADDR`: a minimal HTTP endpoint answering every request (any path) with the Prometheus text
//! of [`crate::metrics::render`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::db::Database;
use crate::error::ZdbError;

/// Longest request head read before answering.
const MAX_HEAD: usize = 16 * 1024;

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ZdbError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ZdbError::io(format!("listen for metrics on {addr}"), e))
}

/// Answers scrapes until `shutdown` fires.
pub async fn serve(listener: TcpListener, db: Arc<Database>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let db = db.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &db).await {
                            tracing::debug!("metrics request failed: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn answer(mut stream: TcpStream, db: &Database) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read_head = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let body = crate::metrics::render(db);
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
