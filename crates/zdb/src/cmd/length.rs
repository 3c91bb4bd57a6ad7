//! LENGTH `<key>`: the payload length, or nil.

use super::{Ctx, Outcome};
use crate::namespace::MAX_KEY_LEN;
use crate::protocol;

/// Runs LENGTH.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    if ctx.args[1].len() > MAX_KEY_LEN {
        ctx.error("Invalid key");
        return Outcome::Done;
    }
    if ctx.refuse_if_frozen() {
        return Outcome::Done;
    }
    match ctx.session.ns.get_entry(ctx.args[1]) {
        Some(e) => protocol::integer(ctx.out, e.length as i64),
        None => protocol::nil(ctx.out),
    }
    Outcome::Done
}
