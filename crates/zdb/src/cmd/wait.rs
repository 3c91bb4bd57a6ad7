//! WAIT `<command | *> [timeout-ms]`: blocks until another client runs that command in the same
//! namespace; replies `+COMMAND`, or "Timeout" after the timeout (default 5 s, 100 ms to 30 min).

use std::time::Duration;

use bytes::BytesMut;

use super::{lookup, Ctx, Outcome, Session};
use crate::db::Database;
use crate::protocol;

const DEFAULT_TIMEOUT_MS: u64 = 5000;
const MAX_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// Runs WAIT (validates and asks the connection to block).
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if ctx.args.len() != 2 && ctx.args.len() != 3 {
        ctx.error("Invalid arguments");
        return Outcome::Done;
    }
    let command: &'static str = if ctx.args[1] == b"*" {
        "*"
    } else {
        match lookup(ctx.args[1]) {
            Some((name, _)) => name,
            None => {
                ctx.error("Unknown command to watch");
                return Outcome::Done;
            }
        }
    };
    let mut timeout = DEFAULT_TIMEOUT_MS;
    if ctx.args.len() == 3 {
        match ctx.text(2).parse::<u64>() {
            Ok(t) if (100..=MAX_TIMEOUT_MS).contains(&t) => timeout = t,
            _ => {
                ctx.error("Invalid timeout");
                return Outcome::Done;
            }
        }
    }
    Outcome::Wait {
        command,
        timeout: Duration::from_millis(timeout),
    }
}

/// Blocks until the awaited event, then writes the reply.
pub async fn block(
    db: &std::sync::Arc<Database>,
    session: &Session,
    command: &'static str,
    timeout: Duration,
    out: &mut BytesMut,
) {
    let (mut rx, _guard) = db.subscribe();
    let ns = session.ns.name.clone();
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(ev)
                    if *ev.namespace == *ns
                        && ev.command != "WAIT"
                        && (command == "*" || ev.command == command) =>
                {
                    return Some(ev.command)
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some(cmd)) => protocol::simple(out, cmd),
        _ => protocol::error(out, "Timeout"),
    }
}
