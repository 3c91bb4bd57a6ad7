//! One client connection: read requests, answer them in order, one write per batch of pipelined requests.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::cmd::{self, Outcome, Session};
use crate::db::Database;
use crate::protocol::{self, parse_request};

/// Serves one client until it disconnects, sends an invalid request, or the server shuts down.
pub async fn serve<S>(db: Arc<Database>, mut stream: S, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut session) = Session::new(&db) else {
        return;
    };
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(8);
    loop {
        // Answer every complete request in the buffer.
        let mut consumed = 0;
        let mut close = false;
        let mut wait: Option<(&'static str, Duration)> = None;
        loop {
            match parse_request(&inbuf[consumed..], &mut ranges) {
                Ok(Some(n)) => {
                    let base = consumed;
                    let argv: Vec<&[u8]> = ranges
                        .iter()
                        .map(|r| &inbuf[base + r.start..base + r.end])
                        .collect();
                    consumed += n;
                    if cmd::set::batchable(&argv) && !session.ns.is_removed() {
                        // Pipelined SETs: gather the run and write it as one batch.
                        let mut run = vec![argv];
                        while let Ok(Some(n2)) = parse_request(&inbuf[consumed..], &mut ranges) {
                            let base = consumed;
                            let next: Vec<&[u8]> = ranges
                                .iter()
                                .map(|r| &inbuf[base + r.start..base + r.end])
                                .collect();
                            if !cmd::set::batchable(&next) {
                                break;
                            }
                            run.push(next);
                            consumed += n2;
                        }
                        cmd::set::run_batch(&db, &mut session, &run, &mut out);
                        continue;
                    }
                    match cmd::execute(&db, &mut session, &argv, &mut out) {
                        Outcome::Done => {}
                        Outcome::Close => {
                            close = true;
                            break;
                        }
                        Outcome::Wait { command, timeout } => {
                            wait = Some((command, timeout));
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    protocol::error(&mut out, &e.reply());
                    close = true;
                    break;
                }
            }
        }
        inbuf.advance(consumed);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
        if let Some((command, timeout)) = wait {
            cmd::wait::block(&db, &session, command, timeout, &mut out).await;
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            // Requests pipelined after WAIT are still in the buffer.
            continue;
        }
        if inbuf.capacity() - inbuf.len() < 8 * 1024 {
            // Grow geometrically so a large value arriving in pieces is not copied over and over.
            inbuf.reserve(inbuf.len().max(64 * 1024));
        }
        tokio::select! {
            r = stream.read_buf(&mut inbuf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = shutdown.changed() => return,
        }
    }
}
