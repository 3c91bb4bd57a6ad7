//! CHECK `<key>`: verifies the stored payload against its checksum: `:1` intact, `:0` corrupted, nil
//! when the key does not exist.

use super::{Ctx, Outcome};
use crate::namespace::MAX_KEY_LEN;
use crate::protocol;

/// Runs CHECK.
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
    let Some(e) = ctx.session.ns.get_entry(ctx.args[1]) else {
        protocol::nil(ctx.out);
        return Outcome::Done;
    };
    let ok = ctx.session.ns.check(ctx.args[1], &e).unwrap_or(false);
    protocol::integer(ctx.out, ok as i64);
    Outcome::Done
}
