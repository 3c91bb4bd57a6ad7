//! Worker threads, each running its own single-threaded event loop (a tokio current-thread runtime), and
//! the hand-off of accepted connections to them in turn.
//!
//! One loop per thread, as redis-server and 0-db run theirs, rather than a work-stealing pool: a request is
//! read, answered and written by the thread that got the readiness event, with no wake-up of another
//! thread, and a server given fewer threads than cores leaves the rest to its clients.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::db::Database;
use crate::error::ZdbError;
use crate::listener::Conn;
use crate::metrics::Metrics;

/// The worker threads of a server.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    next: usize,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads.
    pub fn start(n: usize) -> Result<Self, ZdbError> {
        let (stop, _) = watch::channel(false);
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let mut stopped = stop.subscribe();
            let thread = std::thread::Builder::new()
                .name(format!("zdb-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    Metrics::bind_worker(i);
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                })
                .map_err(|e| ZdbError::Thread(e.to_string()))?;
            let handle = rx
                .recv()
                .map_err(|_| ZdbError::Thread("worker thread exited at start".into()))?
                .map_err(|e| ZdbError::io("start a worker event loop", e))?;
            handles.push(handle);
            threads.push(thread);
        }
        Ok(Workers {
            handles,
            threads,
            stop,
            next: 0,
        })
    }

    /// Serves `conn` on the next worker in turn until it closes or the workers stop.
    pub fn serve(&mut self, db: &Arc<Database>, conn: Conn) {
        let handle = &self.handles[self.next % self.handles.len()];
        self.next = self.next.wrapping_add(1);
        db.metrics.connection_opened();
        let db = db.clone();
        handle.spawn(async move {
            conn.serve(&db).await;
            db.metrics.connection_closed();
        });
    }

    /// Stops every worker (connections still open are dropped) and waits for the threads.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a zdb worker thread panicked");
            }
        }
    }
}
