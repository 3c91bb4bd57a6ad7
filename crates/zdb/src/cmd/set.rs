//! SET / SETX `<key> <value> [timestamp]`: stores a value; replies the key (seq mode: the 8-byte
//! little-endian id), or nil when the value is unchanged. The timestamp form is admin-only.

use super::{Ctx, Outcome, FROZEN, LOCKED, READ_ONLY};
use crate::namespace::{now_timestamp, SetOutcome, MAX_KEY_LEN};
use crate::protocol;

/// Runs SET.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let timestamp = if ctx.args.len() == 4 {
        if !ctx.require_admin() {
            return Outcome::Done;
        }
        // atoll semantics: leading digits, anything else is 0.
        let t = ctx.args[3]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add((d - b'0') as u64)
            });
        t as u32
    } else {
        if !ctx.args_exact(3, true) {
            return Outcome::Done;
        }
        now_timestamp()
    };
    if ctx.args[1].len() > MAX_KEY_LEN {
        ctx.error("Key too large");
        return Outcome::Done;
    }
    if !ctx.session.writable {
        ctx.error(READ_ONLY);
        return Outcome::Done;
    }
    if ctx.session.ns.is_frozen() {
        ctx.error(FROZEN);
        return Outcome::Done;
    }
    if ctx.session.ns.is_locked() {
        ctx.error(LOCKED);
        return Outcome::Done;
    }
    match ctx.session.ns.set(ctx.args[1], ctx.args[2], timestamp) {
        Ok(SetOutcome::Stored(key)) => protocol::bulk(ctx.out, &key),
        Ok(SetOutcome::Unchanged) => protocol::nil(ctx.out),
        Err(e) => ctx.write_error(&e),
    }
    Outcome::Done
}
