//! INFO: server information as a bulk string of `name: value` lines.

use super::{Ctx, Outcome};
use crate::protocol;

/// Runs INFO.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    let db = ctx.db;
    let mut s = String::new();
    s.push_str("# server\n");
    s.push_str(&format!(
        "server_name: 0-db (zdb) compatible, thinnode {}\n",
        env!("CARGO_PKG_VERSION")
    ));
    s.push_str(&format!("server_revision: {}\n", env!("CARGO_PKG_VERSION")));
    s.push_str("engine_revision: 2.0 compatible\n");
    s.push_str(&format!("instance_id: {}\n", db.instance_id));
    s.push_str(&format!("boot_time: {}\n", db.boot_time));
    s.push_str(&format!("uptime: {}\n", db.started.elapsed().as_secs()));
    s.push_str(&format!(
        "running_mode: {}\n",
        match db.cfg.fixed_mode {
            Some(m) => m.name(),
            None => "mixed",
        }
    ));
    s.push_str("\n# clients\n");
    s.push_str(&format!(
        "clients_lifetime: {}\n",
        db.metrics.connections_accepted()
    ));
    s.push_str(&format!(
        "clients_connected: {}\n",
        db.metrics.connections_open()
    ));
    s.push_str("\n# stats\n");
    s.push_str(&format!(
        "commands_executed: {}\n",
        db.metrics.commands_executed()
    ));
    s.push_str(&format!(
        "commands_unknown: {}\n",
        db.metrics.commands_unknown()
    ));
    s.push_str(&format!(
        "commands_admin_failed: {}\n",
        db.metrics.admin_denied_total()
    ));
    let all = db.all();
    let (mut entries, mut size) = (0u64, 0u64);
    for ns in &all {
        let (e, d) = ns.stats();
        entries += e;
        size += d;
    }
    s.push_str("\n# namespaces\n");
    s.push_str(&format!("namespaces: {}\n", all.len()));
    s.push_str(&format!("entries: {entries}\n"));
    s.push_str(&format!("data_size_bytes: {size}\n"));
    s.push_str("\n# settings\n");
    s.push_str(&format!("datasize: {}\n", db.cfg.datasize));
    s.push_str(&format!("sync: {}\n", db.cfg.sync as u8));
    s.push_str(&format!("synctime: {}\n", db.cfg.synctime));
    s.push_str(&format!("protected: {}\n", db.protect as u8));
    s.push_str(&format!(
        "admin_password: {}\n",
        if db.admin_password.is_some() {
            "yes"
        } else {
            "no"
        }
    ));
    protocol::bulk(ctx.out, s.as_bytes());
    Outcome::Done
}
