//! NSLIST: the names of all namespaces.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs NSLIST.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let names = ctx.db.names();
    protocol::array(ctx.out, names.len());
    for n in &names {
        protocol::bulk(ctx.out, n.as_bytes());
    }
    Outcome::Done
}
