//! DBSIZE: the number of live keys in the selected namespace.

use super::{Ctx, Outcome};

/// Runs DBSIZE.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let (entries, _) = ctx.session.ns.stats();
    crate::protocol::integer(ctx.out, entries as i64);
    Outcome::Done
}
