//! GET `<key>`: the value, or nil.

use bytes::BufMut;

use super::{Ctx, Outcome};
use crate::protocol;

/// Appends the value of `key` (or nil) to the reply; the payload is read straight into the buffer.
pub fn reply_value(ctx: &mut Ctx<'_>, key: &[u8]) {
    let Some(entry) = ctx.session.ns.get_entry(key) else {
        protocol::nil(ctx.out);
        return;
    };
    let len = entry.length as usize;
    let mark = ctx.out.len();
    ctx.out.reserve(len + 24);
    protocol::bulk_header(ctx.out, len);
    match ctx.session.ns.append_payload(key.len(), &entry, ctx.out) {
        Ok(()) => ctx.out.put_slice(b"\r\n"),
        Err(e) => {
            tracing::error!(namespace = %ctx.session.ns.name, "cannot read payload: {e}");
            ctx.out.truncate(mark);
            ctx.error("Internal Error");
        }
    }
}

/// Runs GET.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let Some(key) = ctx.read_key() else {
        return Outcome::Done;
    };
    reply_value(ctx, key);
    Outcome::Done
}
