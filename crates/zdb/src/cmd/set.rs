//! SET / SETX `<key> <value> [timestamp]`: stores a value; replies the key (seq mode: the 8-byte
//! little-endian id), or nil when the value is unchanged. The timestamp form is admin-only.

use super::{Ctx, Outcome, FROZEN, LOCKED, READ_ONLY};
use crate::namespace::{now_timestamp, SetOutcome, MAX_KEY_LEN};
use crate::protocol;

/// Runs SET.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let timestamp = if ctx.args.len() == 4 {
        if !ctx.require_admin() {
            return Outcome::Done;
        }
        // atoll semantics: leading digits, anything else is 0.
        let t = ctx.args[3]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add((d - b'0') as u64)
            });
        t as u32
    } else {
        if !ctx.args_exact(3, true) {
            return Outcome::Done;
        }
        now_timestamp()
    };
    if ctx.args[1].len() > MAX_KEY_LEN {
        ctx.error("Key too large");
        return Outcome::Done;
    }
    if !ctx.session.writable {
        ctx.error(READ_ONLY);
        return Outcome::Done;
    }
    if ctx.session.ns.is_frozen() {
        ctx.error(FROZEN);
        return Outcome::Done;
    }
    if ctx.session.ns.is_locked() {
        ctx.error(LOCKED);
        return Outcome::Done;
    }
    match ctx.session.ns.set(ctx.args[1], ctx.args[2], timestamp) {
        Ok(SetOutcome::Stored(key)) => protocol::bulk(ctx.out, &key),
        Ok(SetOutcome::Unchanged) => protocol::nil(ctx.out),
        Err(e) => ctx.write_error(&e),
    }
    Outcome::Done
}

/// Whether a request is a plain `SET key value` that can join a batch.
pub fn batchable(args: &[&[u8]]) -> bool {
    args.len() == 3
        && (args[0].eq_ignore_ascii_case(b"SET") || args[0].eq_ignore_ascii_case(b"SETX"))
}

/// Runs consecutive pipelined `SET key value` requests as one write batch; replies in order, exactly as
/// [`run`] would one by one.
pub fn run_batch(
    db: &crate::db::Database,
    session: &mut super::Session,
    requests: &[crate::connection::Argv<'_>],
    out: &mut bytes::BytesMut,
) {
    let started = std::time::Instant::now();
    let mut errors = 0u64;
    let ns = session.ns.clone();
    // Per request: Err(message) refused before writing, Ok(i) index into the batch.
    let mut plan: Vec<Result<usize, &'static str>> = Vec::with_capacity(requests.len());
    let mut items: Vec<(&[u8], &[u8])> = Vec::with_capacity(requests.len());
    for req in requests {
        let (key, value) = match (req.get(1), req.get(2)) {
            (Some(k), Some(v)) => (*k, *v),
            _ => {
                plan.push(Err("Unexpected arguments"));
                continue;
            }
        };
        let refused = if key.len() > MAX_KEY_LEN {
            Some("Key too large")
        } else if !session.writable {
            Some(READ_ONLY)
        } else if ns.is_frozen() {
            Some(FROZEN)
        } else if ns.is_locked() {
            Some(LOCKED)
        } else {
            None
        };
        match refused {
            Some(msg) => plan.push(Err(msg)),
            None => {
                plan.push(Ok(items.len()));
                items.push((key, value));
            }
        }
    }
    let timestamp = now_timestamp();
    let mut results = ns.set_many(&items, timestamp);
    for p in plan {
        match p {
            Err(msg) => {
                errors += 1;
                protocol::error(out, msg);
            }
            Ok(i) => match results
                .get_mut(i)
                .map(|r| std::mem::replace(r, Ok(SetOutcome::Unchanged)))
            {
                Some(Ok(SetOutcome::Stored(key))) => protocol::bulk(out, &key),
                Some(Ok(SetOutcome::Unchanged)) => protocol::nil(out),
                Some(Err(e)) => {
                    errors += 1;
                    if let crate::namespace::WriteError::Data(io)
                    | crate::namespace::WriteError::Index(io) = &e
                    {
                        tracing::error!(namespace = %ns.name, "write failed: {io}");
                    }
                    protocol::error(out, &e.to_string());
                }
                None => {
                    errors += 1;
                    protocol::error(out, "Internal Error");
                }
            },
        }
        db.notify(&ns.name, "SET");
    }
    if let Some(index) = super::find(b"SET") {
        db.metrics
            .requests(index, requests.len() as u64, errors, started.elapsed());
    }
}
