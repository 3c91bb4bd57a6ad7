//! NSNEW `<name>` (admin): creates a namespace (public, no password, no size limit).

use super::{Ctx, Outcome};
use crate::db::Database;
use crate::protocol;

/// Runs NSNEW.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.require_admin() || !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    if ctx.namespace_name().is_none() {
        return Outcome::Done;
    }
    let name = match std::str::from_utf8(ctx.args[1]) {
        Ok(n) if Database::valid_name(n) => n.to_string(),
        _ => {
            ctx.error("This name is not allowed");
            return Outcome::Done;
        }
    };
    match ctx.db.create(&name) {
        Ok(true) => protocol::ok(ctx.out),
        Ok(false) => ctx.error("This namespace is not available"),
        Err(e) => {
            tracing::error!("NSNEW {name}: {e}");
            ctx.error("Could not create namespace");
        }
    }
    Outcome::Done
}
