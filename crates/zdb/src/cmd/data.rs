//! DATA RAW `<fileid> <offset>`: the raw data entry at a position, as `[key, payload, flags, timestamp,
//! crc]` (used for replication and repair tools).

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs DATA.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.require_admin() {
        return Outcome::Done;
    }
    if ctx.args.len() != 4 || !ctx.args[1].eq_ignore_ascii_case(b"RAW") {
        ctx.error("Invalid arguments");
        return Outcome::Done;
    }
    let (Ok(fileid), Ok(offset)) = (ctx.text(2).parse::<u32>(), ctx.text(3).parse::<u64>()) else {
        ctx.error("Invalid arguments");
        return Outcome::Done;
    };
    match ctx.session.ns.data_raw(fileid, offset) {
        Some(e) => {
            protocol::array(ctx.out, 5);
            protocol::bulk(ctx.out, &e.key);
            protocol::bulk(ctx.out, &e.payload);
            protocol::integer(ctx.out, e.header.flags as i64);
            protocol::integer(ctx.out, e.header.timestamp as i64);
            protocol::integer(ctx.out, e.header.crc as i64);
        }
        None => ctx.error("Invalid offset"),
    }
    Outcome::Done
}
