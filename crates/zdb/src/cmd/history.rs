//! HISTORY `<key> [position]`: versions of a key, newest first. Each reply is `[position, timestamp,
//! payload]`; passing `position` back returns the version before that one, nil when there is none.

use super::{Ctx, Outcome};
use crate::protocol;

fn position(idxid: u32, offset: u32) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&idxid.to_le_bytes());
    p[4..].copy_from_slice(&offset.to_le_bytes());
    p
}

/// Runs HISTORY.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if ctx.args.len() != 2 && ctx.args.len() != 3 {
        ctx.error("Invalid arguments");
        return Outcome::Done;
    }
    if ctx.refuse_if_frozen() {
        return Outcome::Done;
    }
    let ns = ctx.session.ns.clone();
    let key = ctx.args[1];
    let (idxid, offset) = if ctx.args.len() == 2 {
        match ns.lookup(key) {
            Some(e) => (e.idxid, e.idxoffset),
            None => {
                ctx.error("Key not found");
                return Outcome::Done;
            }
        }
    } else {
        let p = ctx.args[2];
        if p.len() != 8 {
            ctx.error("Invalid key format");
            return Outcome::Done;
        }
        let id = crate::format::le_u32(p, 0);
        let off = crate::format::le_u32(p, 4);
        let Some(rec) = ns.read_index_record(id, off).filter(|r| r.key == key) else {
            ctx.error("Invalid key format");
            return Outcome::Done;
        };
        if rec.parentoff == 0 {
            protocol::nil(ctx.out);
            return Outcome::Done;
        }
        (rec.parentid, rec.parentoff)
    };
    let Some(rec) = ns.read_index_record(idxid, offset).filter(|r| r.key == key) else {
        ctx.error("Internal Error");
        return Outcome::Done;
    };
    match ns.read_record_payload(&rec) {
        Ok(payload) => {
            protocol::array(ctx.out, 3);
            protocol::bulk(ctx.out, &position(idxid, offset));
            protocol::integer(ctx.out, rec.timestamp as i64);
            protocol::bulk(ctx.out, &payload);
        }
        Err(_) => ctx.error("Internal Error"),
    }
    Outcome::Done
}
