//! EXISTS `<key>`: `:1` or `:0`.

use super::{Ctx, Outcome};
use crate::namespace::MAX_KEY_LEN;
use crate::protocol;

/// Runs EXISTS.
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
    let found = ctx.session.ns.get_entry(ctx.args[1]).is_some();
    protocol::integer(ctx.out, found as i64);
    Outcome::Done
}
