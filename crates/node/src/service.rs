//! Running nodes under systemd: `node enable`/`disable` (the `multi-user.target.wants` link of a node's
//! `thinnode-node@NAME.service`, the template unit when the host has none, and a drop-in naming a
//! non-default state directory), and readiness reports to the service manager (`sd_notify`).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::error::{io_err, NodeError, Result};
use crate::state::{StateDir, DEFAULT_STATE_DIR};

/// Where `node enable` writes by default (the administrator's unit directory).
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// The environment variable that overrides the unit directory.
pub const UNIT_DIR_ENV: &str = "THINNODE_UNIT_DIR";
/// The template unit of a node.
pub const NODE_UNIT: &str = "thinnode-node@.service";
/// The node template as shipped in `dist/systemd/` (binary at `/usr/bin/thinnode`).
const NODE_UNIT_TEXT: &str = include_str!("../../../dist/systemd/thinnode-node@.service");
/// Where the shipped units name the binary.
const PACKAGED_BINARY: &str = "/usr/bin/thinnode";
/// Where distribution packages install units; searched for the template before writing one.
const PACKAGE_UNIT_DIRS: [&str; 2] = ["/lib/systemd/system", "/usr/lib/systemd/system"];
/// The target whose `.wants` directory holds enabled nodes.
const WANTED_BY: &str = "multi-user.target";

/// What `node enable` or `node disable` changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitChange {
    /// The `multi-user.target.wants/thinnode-node@NAME.service` link.
    pub link: PathBuf,
    /// The template unit the link points to.
    pub template: PathBuf,
    /// Whether `node enable` wrote the template (none was installed).
    pub template_written: bool,
    /// The drop-in naming the node's state directory, when it is not the default.
    pub drop_in: Option<PathBuf>,
}

fn instance(name: &str) -> String {
    format!("thinnode-node@{name}.service")
}

fn drop_in_path(unit_dir: &Path, name: &str) -> PathBuf {
    unit_dir
        .join(format!("{}.d", instance(name)))
        .join("state-dir.conf")
}

/// The template unit to link to: one already in `unit_dir`, else (for the system's own unit directory)
/// one a package installed, else none.
fn installed_template(unit_dir: &Path) -> Option<PathBuf> {
    let own = unit_dir.join(NODE_UNIT);
    if own.is_file() {
        return Some(own);
    }
    if unit_dir != Path::new(DEFAULT_UNIT_DIR) {
        return None;
    }
    PACKAGE_UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join(NODE_UNIT))
        .find(|p| p.is_file())
}

/// Marks node `name` to start at boot: links `thinnode-node@NAME.service` into
/// `UNIT_DIR/multi-user.target.wants`. When no template unit is installed, writes the shipped one to
/// `UNIT_DIR` with `exe` as the binary; when the state directory is not the default, writes a drop-in
/// that names it. The node must have a command (it was started once).
pub fn enable(state: &StateDir, name: &str, unit_dir: &Path, exe: &Path) -> Result<UnitChange> {
    let _lock = state.lock(name)?;
    let mut record = state.read(name)?;
    if record.command.is_empty() {
        return Err(NodeError::Invalid {
            name: name.to_string(),
            reason:
                "it has no command yet; start it once with `thinnode node start NAME -- COMMAND…` \
                     (the unit starts it again with that command)"
                    .into(),
        });
    }
    fs::create_dir_all(unit_dir).map_err(io_err("create", unit_dir))?;
    let (template, template_written) = match installed_template(unit_dir) {
        Some(t) => (t, false),
        None => {
            let path = unit_dir.join(NODE_UNIT);
            let text = NODE_UNIT_TEXT.replace(PACKAGED_BINARY, &exe.to_string_lossy());
            write_file(&path, &text)?;
            (path, true)
        }
    };
    let drop_in = if state.root() != Path::new(DEFAULT_STATE_DIR) {
        let path = drop_in_path(unit_dir, name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let text = format!(
            "# Written by `thinnode node enable {name}`: this node's state directory.\n[Service]\nEnvironment=THINNODE_STATE_DIR={}\n",
            state.root().display()
        );
        write_file(&path, &text)?;
        Some(path)
    } else {
        None
    };
    let wants = unit_dir.join(format!("{WANTED_BY}.wants"));
    fs::create_dir_all(&wants).map_err(io_err("create", &wants))?;
    let link = wants.join(instance(name));
    match fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &link)(e)),
    }
    symlink(&template, &link).map_err(io_err("link", &link))?;
    record.enabled = true;
    state.write(&record)?;
    Ok(UnitChange {
        link,
        template,
        template_written,
        drop_in,
    })
}

/// Stops node `name` from starting at boot: removes its link and drop-in (the template stays, other
/// nodes use it). The node keeps running if it runs.
pub fn disable(state: &StateDir, name: &str, unit_dir: &Path) -> Result<UnitChange> {
    let _lock = state.lock(name)?;
    let mut record = state.read(name)?;
    let link = unit_dir
        .join(format!("{WANTED_BY}.wants"))
        .join(instance(name));
    let template = fs::read_link(&link).unwrap_or_else(|_| unit_dir.join(NODE_UNIT));
    remove_if_present(&link)?;
    let drop_in = drop_in_path(unit_dir, name);
    let had_drop_in = drop_in.exists();
    remove_if_present(&drop_in)?;
    if let Some(dir) = drop_in.parent() {
        // Only when empty: an administrator's own drop-ins stay.
        let _ = fs::remove_dir(dir);
    }
    record.enabled = false;
    state.write(&record)?;
    Ok(UnitChange {
        link,
        template,
        template_written: false,
        drop_in: had_drop_in.then_some(drop_in),
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Writes a unit file (mode 0644) through a temporary file and a rename.
fn write_file(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))
}

/// Tells the service manager (when this process runs under one with `Type=notify`) what it is doing: a
/// `STATUS=` line, with `READY=1` when `ready`. Does nothing without `NOTIFY_SOCKET`.
pub fn notify_service_manager(ready: bool, status: &str) {
    use sd_notify::NotifyState;
    let mut states = vec![NotifyState::Status(status)];
    if ready {
        states.insert(0, NotifyState::Ready);
    }
    if let Err(e) = sd_notify::notify(&states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Tells the service manager this process is stopping.
pub(crate) fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_template_names_the_packaged_binary() {
        assert!(NODE_UNIT_TEXT.contains(&format!(
            "ExecStart={PACKAGED_BINARY} node start %i --foreground"
        )));
        assert!(NODE_UNIT_TEXT.contains(&format!("ExecStop={PACKAGED_BINARY} node stop %i")));
    }
}
