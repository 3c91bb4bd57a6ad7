//! AUTH: `AUTH <password>`, `AUTH SECURE CHALLENGE`, `AUTH SECURE <sha1(challenge:password) hex>`.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::{Ctx, Outcome};
use crate::protocol;

/// Length of the hex SHA-1 a SECURE authentication sends.
pub const SHA1_HEX_LEN: usize = 40;

/// Compares a secret in constant time (for equal lengths).
pub fn secret_eq(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && bool::from(given.ct_eq(expected))
}

/// `hex(sha1("<nonce>:<password>"))`, what a client proves knowledge of the password with.
pub fn secure_hash(nonce: &str, password: &str) -> String {
    let mut h = Sha1::new();
    h.update(nonce.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

/// A fresh random challenge.
pub fn new_challenge() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// Runs AUTH. `AUTH SECURE CHALLENGE` answers even without `--admin` (as 0-db does): `SELECT ns SECURE …`
/// needs the challenge to open a password-protected namespace without sending its password.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    match ctx.args.len() {
        2 => regular(ctx),
        3 => secure(ctx),
        _ => ctx.error("Unexpected arguments"),
    }
    Outcome::Done
}

/// The admin password, or "Authentication disabled" replied.
fn admin_password(ctx: &mut Ctx<'_>) -> Option<String> {
    let admin = ctx.db.admin_password.clone();
    if admin.is_none() {
        ctx.error("Authentication disabled");
    }
    admin
}

/// `AUTH <password>`.
fn regular(ctx: &mut Ctx<'_>) {
    let Some(admin) = admin_password(ctx) else {
        return;
    };
    if !ctx.args_exact(2, false) {
        return;
    }
    if ctx.args[1].len() > 128 {
        ctx.error("Password too long");
        return;
    }
    if secret_eq(ctx.args[1], admin.as_bytes()) {
        ctx.session.admin = true;
        protocol::ok(ctx.out);
    } else {
        ctx.error("Access denied");
    }
}

/// `AUTH SECURE CHALLENGE` and `AUTH SECURE <hash>`.
fn secure(ctx: &mut Ctx<'_>) {
    if !ctx.args_exact(3, false) {
        return;
    }
    if !ctx.args[1].eq_ignore_ascii_case(b"SECURE") {
        ctx.error("Only SECURE extra method supported");
        return;
    }
    if ctx.args[2].eq_ignore_ascii_case(b"CHALLENGE") {
        let nonce = new_challenge();
        protocol::simple(ctx.out, &nonce);
        ctx.session.nonce = Some(nonce);
        return;
    }
    let Some(admin) = admin_password(ctx) else {
        return;
    };
    let Some(nonce) = ctx.session.nonce.take() else {
        ctx.error("No CHALLENGE requested, secure authentication not available");
        return;
    };
    if ctx.args[2].len() != SHA1_HEX_LEN {
        ctx.session.nonce = Some(nonce);
        ctx.error("Invalid hash length");
        return;
    }
    let expected = secure_hash(&nonce, &admin);
    if secret_eq(&ctx.args[2].to_ascii_lowercase(), expected.as_bytes()) {
        ctx.session.admin = true;
        protocol::ok(ctx.out);
    } else {
        ctx.error("Access denied");
    }
}
