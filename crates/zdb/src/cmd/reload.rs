//! RELOAD `<name>` (admin): re-reads a namespace from its files.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs RELOAD.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.require_admin() || !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    let Some(ns) = ctx.existing_namespace() else {
        return Outcome::Done;
    };
    match ns.reload() {
        Ok(()) => protocol::ok(ctx.out),
        Err(e) => {
            tracing::error!(namespace = %ns.name, "RELOAD: {e}");
            ctx.error("Internal Server Error");
        }
    }
    Outcome::Done
}
