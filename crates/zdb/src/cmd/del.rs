//! DEL `<key>`: deletes a key (appends a deletion entry); `+OK` or "Key not found".

use super::{Ctx, Outcome, LOCKED, READ_ONLY};
use crate::namespace::MAX_KEY_LEN;
use crate::protocol;

/// Runs DEL.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    if ctx.args[1].len() > MAX_KEY_LEN {
        ctx.error("Invalid key");
        return Outcome::Done;
    }
    if !ctx.session.writable {
        ctx.error(READ_ONLY);
        return Outcome::Done;
    }
    if ctx.refuse_if_frozen() {
        return Outcome::Done;
    }
    if ctx.session.ns.is_locked() {
        ctx.error(LOCKED);
        return Outcome::Done;
    }
    match ctx.session.ns.delete(ctx.args[1]) {
        Ok(()) => protocol::ok(ctx.out),
        Err(e) => ctx.write_error(&e),
    }
    Outcome::Done
}
