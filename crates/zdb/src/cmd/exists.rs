//! EXISTS `<key>`: `:1` or `:0`.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs EXISTS.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let Some(key) = ctx.read_key() else {
        return Outcome::Done;
    };
    let found = ctx.session.ns.get_entry(key).is_some();
    protocol::integer(ctx.out, found as i64);
    Outcome::Done
}
