//! NSSET `<name> <property> <value>` (admin): maxsize, password (`*` clears), public, worm, mode (empty
//! namespace, mixed mode only), lock and freeze (runtime only).

use super::{Ctx, Outcome};
use crate::namespace::{Mode, DEFAULT_NAMESPACE};
use crate::protocol;

/// Runs NSSET.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.require_admin() || !ctx.args_exact(4, false) {
        return Outcome::Done;
    }
    let Some(name) = ctx.namespace_name() else {
        return Outcome::Done;
    };
    if ctx.args[3].len() > 63 {
        ctx.error("Invalid value");
        return Outcome::Done;
    }
    let property = ctx.text(2);
    let value = ctx.text(3);
    if name == DEFAULT_NAMESPACE {
        ctx.error("Cannot update default namespace");
        return Outcome::Done;
    }
    let Some(ns) = ctx.db.get(&name) else {
        ctx.error("Namespace not found");
        return Outcome::Done;
    };
    let flag = value.starts_with('1');
    let result = match property.as_str() {
        "maxsize" => {
            let n = value
                .bytes()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u64, |n, d| {
                    n.saturating_mul(10).saturating_add((d - b'0') as u64)
                });
            ns.update_settings(|s| s.maxsize = n)
        }
        "password" => {
            let pw = (value != "*").then(|| value.clone());
            ns.update_settings(|s| s.password = pw)
        }
        "public" => ns.update_settings(|s| s.public = flag),
        "worm" => ns.update_settings(|s| s.worm = flag),
        "lock" => {
            ns.set_locked(flag);
            Ok(())
        }
        "freeze" => {
            ns.set_frozen(flag);
            Ok(())
        }
        "mode" => {
            if ctx.db.cfg.fixed_mode.is_some() {
                ctx.error("This server instance is configured to use a single runtime mode");
                return Outcome::Done;
            }
            let mode = match value.as_str() {
                "user" => Mode::User,
                "seq" => Mode::Seq,
                _ => {
                    ctx.error("Invalid property value (expected: user, seq)");
                    return Outcome::Done;
                }
            };
            if let Err(e) = ns.set_mode(mode) {
                ctx.error(&e.to_string());
                return Outcome::Done;
            }
            Ok(())
        }
        _ => {
            ctx.error("Invalid property");
            return Outcome::Done;
        }
    };
    match result {
        Ok(()) => protocol::ok(ctx.out),
        Err(e) => {
            tracing::error!("NSSET {name} {property}: {e}");
            ctx.error("Internal Server Error");
        }
    }
    Outcome::Done
}
