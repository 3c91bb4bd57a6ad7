//! NSDEL `<name>` (admin): deletes a namespace and its files; its other clients are disconnected.

use super::{Ctx, Outcome};
use crate::namespace::DEFAULT_NAMESPACE;
use crate::protocol;

/// Runs NSDEL.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.require_admin() || !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    let Some(name) = ctx.namespace_name() else {
        return Outcome::Done;
    };
    if name == DEFAULT_NAMESPACE {
        ctx.error("Cannot remove default namespace");
        return Outcome::Done;
    }
    let Some(ns) = ctx.db.get(&name) else {
        ctx.error("This namespace doesn't exists");
        return Outcome::Done;
    };
    if std::sync::Arc::ptr_eq(&ns, &ctx.session.ns) {
        ctx.error("Cannot remove namespace you're currently using.");
        return Outcome::Done;
    }
    match ctx.db.remove(&name) {
        Ok(_) => protocol::ok(ctx.out),
        Err(e) => {
            tracing::error!("NSDEL {name}: {e}");
            ctx.error("Could not delete this namespace");
        }
    }
    Outcome::Done
}
