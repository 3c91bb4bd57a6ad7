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

/// Why [`process`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every complete request was answered; more bytes are needed.
    NeedMore,
    /// Send the replies, then close the connection.
    Close,
    /// Send the replies, then block in WAIT.
    Wait {
        /// Upper-case command name or `*`.
        command: &'static str,
        /// How long to wait.
        timeout: Duration,
    },
}

/// Answers the complete requests at the start of `buf`, in order, appending replies to `out`. Consecutive
/// plain `SET key value` requests are written as one batch. Returns how many bytes were consumed and why it
/// stopped. A malformed request gets a `-Protocol error…` reply and [`Stop::Close`].
pub fn process(
    db: &Database,
    session: &mut Session,
    buf: &[u8],
    out: &mut BytesMut,
) -> (usize, Stop) {
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(8);
    let mut consumed = 0;
    loop {
        let n = match parse_request(&buf[consumed..], &mut ranges) {
            Ok(Some(n)) => n,
            Ok(None) => return (consumed, Stop::NeedMore),
            Err(e) => {
                protocol::error(out, &e.reply());
                return (consumed, Stop::Close);
            }
        };
        let base = consumed;
        let argv: Vec<&[u8]> = ranges
            .iter()
            .map(|r| &buf[base + r.start..base + r.end])
            .collect();
        consumed += n;
        if cmd::set::batchable(&argv) && !session.ns.is_removed() {
            // Pipelined SETs: gather the run and write it as one batch.
            let mut run = vec![argv];
            while let Ok(Some(n2)) = parse_request(&buf[consumed..], &mut ranges) {
                let base = consumed;
                let next: Vec<&[u8]> = ranges
                    .iter()
                    .map(|r| &buf[base + r.start..base + r.end])
                    .collect();
                if !cmd::set::batchable(&next) {
                    break;
                }
                run.push(next);
                consumed += n2;
            }
            cmd::set::run_batch(db, session, &run, out);
            continue;
        }
        match cmd::execute(db, session, &argv, out) {
            Outcome::Done => {}
            Outcome::Close => return (consumed, Stop::Close),
            Outcome::Wait { command, timeout } => {
                return (consumed, Stop::Wait { command, timeout })
            }
        }
    }
}

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
    loop {
        let (consumed, stop) = process(&db, &mut session, &inbuf, &mut out);
        inbuf.advance(consumed);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match stop {
            Stop::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            Stop::Wait { command, timeout } => {
                cmd::wait::block(&db, &session, command, timeout, &mut out).await;
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                // Requests pipelined after WAIT are still in the buffer.
                continue;
            }
            Stop::NeedMore => {}
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
