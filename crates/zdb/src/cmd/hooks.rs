//! HOOKS: hooks still running. Ours run detached and are reaped in the background, so the list is empty.

use super::{Ctx, Outcome};

/// Runs HOOKS.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.require_admin() {
        return Outcome::Done;
    }
    crate::protocol::array(ctx.out, 0);
    Outcome::Done
}
