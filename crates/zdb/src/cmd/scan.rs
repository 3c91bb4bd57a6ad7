//! SCAN / SCANX `[cursor]` walk forward over the namespace in write order; RSCAN `[cursor]` walks backward.
//! Reply: `[next-cursor, [[key, size, timestamp], …]]`, or "No more data" at the end.

use std::time::{Duration, Instant};

use super::{Ctx, Outcome};
use crate::namespace::{LocatedRecord, Namespace};
use crate::protocol;

/// Time budget of one SCAN reply, so a long walk does not hold the connection.
const SCAN_TIME_SLICE: Duration = Duration::from_millis(10);
/// Most entries in one SCAN reply.
const SCAN_MAX_ENTRIES: usize = 1000;

fn walk(ctx: &mut Ctx<'_>, forward: bool) -> Outcome {
    let ns = ctx.session.ns.clone();
    if ctx.refuse_if_frozen() {
        return Outcome::Done;
    }
    let step = |ns: &Namespace, r: &LocatedRecord| {
        if forward {
            ns.next_live(r)
        } else {
            ns.prev_live(r)
        }
    };
    let mut list: Vec<LocatedRecord> = Vec::new();
    let mut cur = if ctx.args.len() >= 2 {
        let Some(start) = ns.resolve_cursor(ctx.args[1]) else {
            ctx.error("Invalid key format");
            return Outcome::Done;
        };
        step(&ns, &start)
    } else if forward {
        ns.first_live_from(0, crate::format::index_file::INDEX_HEADER_LEN as u32)
    } else {
        ns.last_live()
    };
    let started = Instant::now();
    while let Some(r) = cur {
        cur = if list.len() + 1 < SCAN_MAX_ENTRIES && started.elapsed() < SCAN_TIME_SLICE {
            step(&ns, &r)
        } else {
            None
        };
        list.push(r);
    }
    let Some(last) = list.last() else {
        ctx.error("No more data");
        return Outcome::Done;
    };
    protocol::array(ctx.out, 2);
    protocol::bulk(ctx.out, &last.cursor());
    protocol::array(ctx.out, list.len());
    for r in &list {
        protocol::array(ctx.out, 3);
        protocol::bulk(ctx.out, &r.record.key);
        protocol::integer(ctx.out, r.record.length as i64);
        protocol::integer(ctx.out, r.record.timestamp as i64);
    }
    Outcome::Done
}

/// Runs SCAN and SCANX.
pub fn run_forward(ctx: &mut Ctx<'_>) -> Outcome {
    walk(ctx, true)
}

/// Runs RSCAN.
pub fn run_backward(ctx: &mut Ctx<'_>) -> Outcome {
    walk(ctx, false)
}
