//! NSJUMP (admin): closes the selected namespace's current data and index files and starts the next ones.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs NSJUMP.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.require_admin() {
        return Outcome::Done;
    }
    match ctx.session.ns.jump() {
        Ok(_) => protocol::ok(ctx.out),
        Err(e) => {
            tracing::error!(namespace = %ctx.session.ns.name, "NSJUMP: {e}");
            ctx.error("Cannot jump to the next file");
        }
    }
    Outcome::Done
}
