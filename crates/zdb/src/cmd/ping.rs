//! PING: `+PONG`.

use super::{Ctx, Outcome};

/// Runs PING.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    crate::protocol::simple(ctx.out, "PONG");
    Outcome::Done
}
