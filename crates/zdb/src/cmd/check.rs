//! CHECK `<key>`: verifies the stored payload against its checksum: `:1` intact, `:0` corrupted, nil
//! when the key does not exist.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs CHECK.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let Some(key) = ctx.read_key() else {
        return Outcome::Done;
    };
    let Some(e) = ctx.session.ns.get_entry(key) else {
        protocol::nil(ctx.out);
        return Outcome::Done;
    };
    let ok = ctx.session.ns.check(key, &e).unwrap_or(false);
    protocol::integer(ctx.out, ok as i64);
    Outcome::Done
}
