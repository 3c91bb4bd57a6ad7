//! MGET `<key> [key …]` (at most 1023 keys): an array of values or nils.

use super::{get::reply_value, Ctx, Outcome};
use crate::namespace::MAX_KEY_LEN;
use crate::protocol;

/// Most keys one MGET may ask for.
pub const MAX_MGET_KEYS: usize = 1023;

/// Runs MGET.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if ctx.args.len() < 2 {
        ctx.error("Invalid arguments");
        return Outcome::Done;
    }
    if ctx.args.len() - 1 > MAX_MGET_KEYS {
        ctx.error("Too many keys");
        return Outcome::Done;
    }
    if ctx.args[1..].iter().any(|k| k.len() > MAX_KEY_LEN) {
        ctx.error("Invalid key");
        return Outcome::Done;
    }
    if ctx.refuse_if_frozen() {
        return Outcome::Done;
    }
    let args = ctx.args;
    protocol::array(ctx.out, args.len() - 1);
    for key in &args[1..] {
        reply_value(ctx, key);
    }
    Outcome::Done
}
