//! One client connection: read requests, answer them in order, one write per batch of pipelined requests.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// The arguments of one request, borrowed from the read buffer (no allocation for up to 8 arguments).
pub type Argv<'a> = SmallVec<[&'a [u8]; 8]>;

fn arguments<'a>(buf: &'a [u8], base: usize, ranges: &[Range<usize>]) -> Argv<'a> {
    ranges
        .iter()
        .map(|r| &buf[base + r.start..base + r.end])
        .collect()
}

/// Whether a complete pipelined `SET key value` follows at `at` (a lone SET takes the plain path).
fn next_is_batchable(buf: &[u8], at: usize, ranges: &mut Vec<Range<usize>>) -> bool {
    matches!(parse_request(&buf[at..], ranges), Ok(Some(_)))
        && cmd::set::batchable(&arguments(buf, at, ranges))
}

/// Answers the complete requests at the start of `buf`, in order, appending replies to `out`. Consecutive
/// plain `SET key value` requests are written as one batch. Returns how many bytes were consumed and why it
/// stopped. A malformed request gets a `-Protocol error…` reply and [`Stop::Close`]. `ranges` is scratch
/// space kept by the caller between calls.
pub fn process(
    db: &Database,
    session: &mut Session,
    buf: &[u8],
    out: &mut BytesMut,
    ranges: &mut Vec<Range<usize>>,
) -> (usize, Stop) {
    let mut consumed = 0;
    loop {
        let n = match parse_request(&buf[consumed..], ranges) {
            Ok(Some(n)) => n,
            Ok(None) => return (consumed, Stop::NeedMore),
            Err(e) => {
                db.metrics.protocol_error();
                protocol::error(out, &e.reply());
                return (consumed, Stop::Close);
            }
        };
        let argv = arguments(buf, consumed, ranges);
        consumed += n;
        if cmd::set::batchable(&argv)
            && !session.ns.is_removed()
            && next_is_batchable(buf, consumed, ranges)
        {
            // Pipelined SETs: gather the run and write it as one batch.
            let mut run = vec![argv];
            while let Ok(Some(n2)) = parse_request(&buf[consumed..], ranges) {
                let next = arguments(buf, consumed, ranges);
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

/// Serves one client until it disconnects or sends an invalid request. At shutdown the worker's event loop
/// is dropped, and the task with it.
pub async fn serve<S>(db: &Arc<Database>, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(mut session) = Session::new(db) else {
        return;
    };
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut ranges = Vec::with_capacity(8);
    loop {
        let (consumed, stop) = process(db, &mut session, &inbuf, &mut out, &mut ranges);
        inbuf.advance(consumed);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            db.metrics.bytes_out(out.len());
            out.clear();
        }
        match stop {
            Stop::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            Stop::Wait { command, timeout } => {
                cmd::wait::block(db, &session, command, timeout, &mut out).await;
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                db.metrics.bytes_out(out.len());
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
        match stream.read_buf(&mut inbuf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => db.metrics.bytes_in(n),
        }
    }
}
