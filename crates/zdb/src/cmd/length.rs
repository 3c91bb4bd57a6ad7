//! LENGTH `<key>`: the payload length, or nil.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs LENGTH.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let Some(key) = ctx.read_key() else {
        return Outcome::Done;
    };
    match ctx.session.ns.get_entry(key) {
        Some(e) => protocol::integer(ctx.out, e.length as i64),
        None => protocol::nil(ctx.out),
    }
    Outcome::Done
}
