//! NSINFO `<name>`: a namespace's settings and statistics as `name: value` lines.

use super::{Ctx, Outcome};
use crate::protocol;

fn free_space(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then(|| st.f_bsize as u64 * st.f_bavail as u64)
    }
}

/// Runs NSINFO.
pub fn run(ctx: &mut Ctx<'_>) -> Outcome {
    if !ctx.args_exact(2, false) {
        return Outcome::Done;
    }
    let Some(ns) = ctx.existing_namespace() else {
        return Outcome::Done;
    };
    let st = ns.settings();
    let (entries, datasize) = ns.stats();
    let index_size = ns.index_memory_size();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut s = String::new();
    s.push_str("# namespace\n");
    s.push_str(&format!("name: {}\n", ns.name));
    s.push_str(&format!("entries: {entries}\n"));
    s.push_str(&format!("public: {}\n", yes(st.public)));
    s.push_str(&format!("worm: {}\n", yes(st.worm)));
    s.push_str(&format!("locked: {}\n", yes(ns.is_locked())));
    s.push_str(&format!("frozen: {}\n", yes(ns.is_frozen())));
    s.push_str(&format!("password: {}\n", yes(st.password.is_some())));
    s.push_str(&format!("data_size_bytes: {datasize}\n"));
    s.push_str(&format!("data_size_mb: {:.2}\n", mb(datasize)));
    s.push_str(&format!("data_limits_bytes: {}\n", st.maxsize));
    s.push_str(&format!("index_size_bytes: {index_size}\n"));
    s.push_str(&format!(
        "index_size_kb: {:.2}\n",
        index_size as f64 / 1024.0
    ));
    s.push_str(&format!(
        "next_internal_id: 0x{:08x}\n",
        (ns.next_seq() as u32).swap_bytes()
    ));
    s.push_str(&format!("mode: {}\n", st.mode.name()));
    s.push_str("stats_index_io_errors: 0\nstats_index_io_error_last: 0\nstats_index_faults: 0\n");
    s.push_str("stats_data_io_errors: 0\nstats_data_io_error_last: 0\nstats_data_faults: 0\n");
    if st.maxsize > 0 {
        s.push_str(&format!(
            "space_available: {}\n",
            st.maxsize.saturating_sub(datasize)
        ));
    }
    if let Some(f) = free_space(ns.index_dir()) {
        s.push_str(&format!(
            "index_disk_freespace_bytes: {f}\nindex_disk_freespace_mb: {:.2}\n",
            mb(f)
        ));
    }
    if let Some(f) = free_space(ns.data_dir()) {
        s.push_str(&format!(
            "data_disk_freespace_bytes: {f}\ndata_disk_freespace_mb: {:.2}\n",
            mb(f)
        ));
    }
    protocol::bulk(ctx.out, s.as_bytes());
    Outcome::Done
}
