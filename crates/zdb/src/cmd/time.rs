//! TIME: `[seconds, microseconds]` as bulk strings, like Redis.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs TIME.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    protocol::array(ctx.out, 2);
    protocol::bulk(ctx.out, now.as_secs().to_string().as_bytes());
    protocol::bulk(ctx.out, now.subsec_micros().to_string().as_bytes());
    Outcome::Done
}
