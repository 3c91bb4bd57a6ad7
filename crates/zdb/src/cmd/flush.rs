//! FLUSH: empties the selected namespace; refused on public or password-less namespaces.

use super::{Ctx, Outcome, READ_ONLY};
use crate::protocol;

/// Runs FLUSH.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let st = ctx.session.ns.settings();
    if st.public || st.password.is_none() {
        ctx.error("Flushing public namespace denied");
        return Outcome::Done;
    }
    if !ctx.session.writable || ctx.session.ns.is_read_only_fs() {
        ctx.error(READ_ONLY);
        return Outcome::Done;
    }
    match ctx.session.ns.flush() {
        Ok(()) => protocol::ok(ctx.out),
        Err(e) => {
            tracing::error!(namespace = %ctx.session.ns.name, "FLUSH: {e}");
            ctx.error("Internal Server Error");
        }
    }
    Outcome::Done
}
