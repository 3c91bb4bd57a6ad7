//! SELECT `<name> [password | SECURE <sha1(challenge:password)>]`: switches namespace. A public namespace
//! with a password is read-only without it; a private one refuses.

use super::{auth, Ctx, Outcome};
use crate::namespace::DEFAULT_NAMESPACE;
use crate::protocol;

/// Runs SELECT.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if ctx.args.len() < 2 {
        ctx.error("Invalid argument");
        return Outcome::Done;
    }
    let Some(ns) = ctx.existing_namespace() else {
        return Outcome::Done;
    };
    let st = ns.settings();
    let mut writable = true;
    if let Some(password) = &st.password {
        match ctx.args.len() {
            2 => {
                if !st.public {
                    ctx.error("Namespace protected and private");
                    return Outcome::Done;
                }
                writable = false;
            }
            3 => {
                if ctx.args[2].len() > 255 {
                    ctx.error("Password too long");
                    return Outcome::Done;
                }
                if !auth::secret_eq(ctx.args[2], password.as_bytes()) {
                    ctx.error("Access denied");
                    return Outcome::Done;
                }
            }
            4 => {
                if !ctx.args[2].eq_ignore_ascii_case(b"SECURE") {
                    ctx.error("Only SECURE extra method supported");
                    return Outcome::Done;
                }
                let Some(nonce) = ctx.session.nonce.clone() else {
                    ctx.error("No CHALLENGE requested, secure authentication not available");
                    return Outcome::Done;
                };
                if ctx.args[3].len() != auth::SHA1_HEX_LEN {
                    ctx.error("Invalid hash length");
                    return Outcome::Done;
                }
                let expected = auth::secure_hash(&nonce, password);
                if !auth::secret_eq(&ctx.args[3].to_ascii_lowercase(), expected.as_bytes()) {
                    ctx.error("Access denied");
                    return Outcome::Done;
                }
            }
            _ => {
                ctx.error("Too many arguments");
                return Outcome::Done;
            }
        }
    } else if ns.name == DEFAULT_NAMESPACE && ctx.db.protect {
        writable = false;
    }
    ctx.session.ns = ns;
    ctx.session.writable = writable;
    protocol::ok(ctx.out);
    Outcome::Done
}
