//! KSCAN `<prefix>`: every live key starting with `prefix` (user mode only), as `[0, [key, …]]`.

use super::{Ctx, Outcome};
use crate::namespace::Mode;
use crate::protocol;

/// Runs KSCAN.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if ctx.session.ns.settings().mode != Mode::User {
        ctx.error("Index running mode doesn't support this feature");
        return Outcome::Done;
    }
    if !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    let keys = ctx.session.ns.keys_with_prefix(ctx.args[1]);
    if keys.is_empty() {
        ctx.error("No keys match");
        return Outcome::Done;
    }
    protocol::array(ctx.out, 2);
    protocol::bulk(ctx.out, b"0");
    protocol::array(ctx.out, keys.len());
    for k in &keys {
        protocol::bulk(ctx.out, k);
    }
    Outcome::Done
}
