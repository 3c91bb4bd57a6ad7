//! INDEX DIRTY [RESET]: ids of index files modified in place (overwrite/delete flags) since start or the
//! last reset, for incremental backups.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs INDEX.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let sub_ok = ctx.args.len() >= 2 && ctx.args[1].eq_ignore_ascii_case(b"DIRTY");
    let reset = ctx.args.len() == 3 && ctx.args[2].eq_ignore_ascii_case(b"RESET");
    if !sub_ok || ctx.args.len() > 3 || (ctx.args.len() == 3 && !reset) {
        ctx.error("Invalid arguments");
        return Outcome::Done;
    }
    let dirty = ctx.session.ns.dirty_files(reset);
    protocol::array(ctx.out, dirty.len());
    for id in dirty {
        protocol::integer(ctx.out, id as i64);
    }
    Outcome::Done
}
