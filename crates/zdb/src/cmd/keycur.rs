//! KEYCUR `<key>`: a SCAN cursor positioned at this key.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs KEYCUR.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    match ctx.session.ns.lookup(ctx.args[1]) {
        Some(e) => protocol::bulk(ctx.out, &e.cursor(ctx.args[1].len())),
        None => ctx.error("Key not found"),
    }
    Outcome::Done
}
