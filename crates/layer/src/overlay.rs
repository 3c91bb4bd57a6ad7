//! The `overlay` layer: kernel overlayfs with the read-only image mount as lower dir and the layer's
//! `upper/` and `work/` directories on local disk.
//!
//! Good for databases that write new files (RocksDB, LevelDB); a database that opens its files read-write
//! (ParityDB) gets every file copied up whole on open, which is what the `blocks` layer is for.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mount::unescape_mount_field;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::usage::{self, LayerUsage};
use crate::{io_err, Error, LayerKind, LayerMetadata, Result, METADATA_VERSION};

/// Name of the upper directory inside an overlay layer directory.
pub const UPPER_DIR: &str = "upper";
/// Name of overlayfs' work directory inside an overlay layer directory.
pub const WORK_DIR: &str = "work";

/// Overlayfs mount options recorded with the layer, so that it is always remounted the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayOptions {
    /// `redirect_dir=on`: renaming a lower directory works (otherwise EXDEV).
    pub redirect_dir: bool,
    /// `metacopy=on`: chmod/chown/utimes on a lower file copy up only metadata, not the data.
    pub metacopy: bool,
    /// `index=on`: lower hard links stay linked after copy-up, but the layer is tied to the lower's
    /// filesystem identity (needs file handles on the lower).
    pub index: bool,
}

impl Default for OverlayOptions {
    /// The measured choice for this project: redirect_dir and metacopy on, index off (docs/layers.md).
    fn default() -> Self {
        OverlayOptions {
            redirect_dir: true,
            metacopy: true,
            index: false,
        }
    }
}

impl OverlayOptions {
    fn mount_data(&self) -> String {
        let on_off = |b: bool| if b { "on" } else { "off" };
        format!(
            "redirect_dir={},metacopy={},index={}",
            on_off(self.redirect_dir),
            on_off(self.metacopy),
            on_off(self.index)
        )
    }
}

/// An overlay layer directory: `DIR/layer.json`, `DIR/upper`, `DIR/work`.
#[derive(Debug, Clone)]
pub struct OverlayLayer {
    dir: PathBuf,
    options: OverlayOptions,
}

impl OverlayLayer {
    /// Creates an overlay layer in `dir` (created if missing; must not already hold a layer).
    pub fn create(dir: &Path, options: OverlayOptions) -> Result<OverlayLayer> {
        let dir = crate::new_layer_dir(dir)?;
        for sub in [UPPER_DIR, WORK_DIR] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        }
        LayerMetadata {
            version: METADATA_VERSION,
            kind: LayerKind::Overlay,
            overlay: Some(options.clone()),
            blocks: None,
        }
        .write(&dir)?;
        Ok(OverlayLayer { dir, options })
    }

    /// Opens the existing overlay layer in `dir`.
    pub fn open(dir: &Path) -> Result<OverlayLayer> {
        let meta = LayerMetadata::read_kind(dir, LayerKind::Overlay)?;
        let options = meta.overlay.ok_or_else(|| Error::BadMetadata {
            path: dir.join(crate::METADATA_FILE),
            reason: "overlay layer without overlay options".into(),
        })?;
        let dir = fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        Ok(OverlayLayer { dir, options })
    }

    /// Opens the overlay layer in `dir`, creating it with `options` if the directory holds no layer.
    pub fn open_or_create(dir: &Path, options: OverlayOptions) -> Result<OverlayLayer> {
        match OverlayLayer::open(dir) {
            Err(Error::NotALayer(_)) => OverlayLayer::create(dir, options),
            other => other,
        }
    }

    /// The layer directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the layer is mounted with.
    pub fn options(&self) -> &OverlayOptions {
        &self.options
    }

    /// The upper directory (the node's changes, in overlayfs format).
    pub fn upper_dir(&self) -> PathBuf {
        self.dir.join(UPPER_DIR)
    }

    /// Overlayfs' work directory.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join(WORK_DIR)
    }

    /// Mounts the overlay at `target` with `lower` (the read-only base, e.g. a `thinnode mount`) below.
    /// Refused while the layer is mounted elsewhere.
    pub fn mount(&self, lower: &Path, target: &Path) -> Result<()> {
        let lower = fs::canonicalize(lower).map_err(io_err("resolve lower dir", lower))?;
        let target = fs::canonicalize(target).map_err(io_err("resolve mount target", target))?;
        let upper = self.upper_dir();
        let work = self.work_dir();
        for (what, p) in [("lower", &lower), ("target", &target)] {
            let meta = fs::metadata(p).map_err(io_err("stat", p))?;
            if !meta.is_dir() {
                return Err(Error::MountPrecondition(format!(
                    "{what} {} is not a directory",
                    p.display()
                )));
            }
        }
        if upper.starts_with(&lower) || lower.starts_with(&upper) {
            return Err(Error::MountPrecondition(format!(
                "upper dir {} and lower dir {} must not contain each other",
                upper.display(),
                lower.display()
            )));
        }
        // With index=off the kernel only warns when one upper dir serves two mounts, and the two
        // mounts then corrupt each other; refuse it here.
        let mounts = self.mount_points()?;
        if !mounts.is_empty() {
            return Err(Error::Mounted {
                layer: self.dir.clone(),
                mounts,
            });
        }
        let upper_fs = filesystem_type(&upper)?;
        if let Some(name) = unsupported_upper_fs(upper_fs) {
            return Err(Error::MountPrecondition(format!(
                "upper dir {} is on {name}, which overlayfs cannot use as upper (it needs trusted.* \
                 xattrs, d_type and rename whiteouts: use a local ext4/xfs/btrfs/tmpfs directory)",
                upper.display()
            )));
        }
        let (upper_dev, work_dev) = (dev_of(&upper)?, dev_of(&work)?);
        if upper_dev != work_dev {
            return Err(Error::MountPrecondition(format!(
                "work dir {} and upper dir {} are on different filesystems",
                work.display(),
                upper.display()
            )));
        }
        let mut data = String::new();
        for (key, p) in [
            ("lowerdir", &lower),
            ("upperdir", &upper),
            ("workdir", &work),
        ] {
            let s = option_path(p)?;
            data.push_str(key);
            data.push('=');
            data.push_str(s);
            data.push(',');
        }
        data.push_str(&self.options.mount_data());
        nix::mount::mount(
            Some("thinnode-overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|errno| Error::Syscall {
            syscall: "mount",
            target: target.clone(),
            errno,
            explanation: explain_mount_errno(errno),
        })
    }

    /// Unmounts the overlay at `target` (which must be a mount of this layer).
    pub fn unmount(&self, target: &Path) -> Result<()> {
        let target = fs::canonicalize(target).map_err(io_err("resolve mount target", target))?;
        if !self.mount_points()?.contains(&target) {
            return Err(Error::MountPrecondition(format!(
                "{} is not a mount of layer {}",
                target.display(),
                self.dir.display()
            )));
        }
        nix::mount::umount2(&target, MntFlags::empty()).map_err(|errno| Error::Syscall {
            syscall: "umount",
            target: target.clone(),
            errno,
            explanation: match errno {
                Errno::EBUSY => "files or directories under the mount are still open or in use \
                                 (a process's cwd, an open file, a nested mount)"
                    .into(),
                Errno::EPERM => "unmounting needs root (CAP_SYS_ADMIN)".into(),
                other => other.desc().into(),
            },
        })
    }

    /// Where this layer is currently mounted (from /proc/self/mountinfo).
    pub fn mount_points(&self) -> Result<Vec<PathBuf>> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(io_err("read", path))?;
        let upper = self.upper_dir();
        Ok(overlay_mounts_with_upper(&text, &upper))
    }

    /// Bytes the layer uses: allocated blocks of `upper/` (apparent sizes are reported apart); `work/`
    /// and the metadata file are not counted.
    pub fn du(&self) -> Result<LayerUsage> {
        usage::measure(&[self.upper_dir()])
    }

    /// Drops every change in the layer (empties `upper/` and `work/`). Refused while mounted.
    pub fn reset(&self) -> Result<()> {
        let mounts = self.mount_points()?;
        if !mounts.is_empty() {
            return Err(Error::Mounted {
                layer: self.dir.clone(),
                mounts,
            });
        }
        for sub in [self.upper_dir(), self.work_dir()] {
            match fs::remove_dir_all(&sub) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &sub)(e)),
            }
            fs::create_dir(&sub).map_err(io_err("create directory", &sub))?;
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync", &self.dir))?;
        Ok(())
    }
}

fn dev_of(p: &Path) -> Result<u64> {
    Ok(fs::metadata(p).map_err(io_err("stat", p))?.dev())
}

fn filesystem_type(p: &Path) -> Result<i64> {
    let st = nix::sys::statfs::statfs(p).map_err(|errno| Error::Io {
        action: "statfs",
        path: p.to_path_buf(),
        source: io::Error::from(errno),
    })?;
    // The magic's integer type differs between libc targets; widen it.
    #[allow(clippy::useless_conversion)]
    Ok(i64::from(st.filesystem_type().0))
}

/// Names the filesystem if overlayfs cannot put an upper dir on it.
fn unsupported_upper_fs(magic: i64) -> Option<&'static str> {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    const NFS_SUPER_MAGIC: i64 = 0x6969;
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    match magic {
        OVERLAYFS_SUPER_MAGIC => Some("overlayfs"),
        FUSE_SUPER_MAGIC => Some("a FUSE filesystem"),
        NFS_SUPER_MAGIC => Some("NFS"),
        PROC_SUPER_MAGIC => Some("procfs"),
        SYSFS_MAGIC => Some("sysfs"),
        _ => None,
    }
}

/// The path as it can appear in overlayfs' comma-separated option string.
fn option_path(p: &Path) -> Result<&str> {
    match p.to_str() {
        Some(s) if !s.contains([',', ':', '\n']) => Ok(s),
        _ => Err(Error::UnsupportedPath(p.to_path_buf())),
    }
}

fn explain_mount_errno(errno: Errno) -> String {
    match errno {
        Errno::EPERM => {
            "mounting overlayfs needs root (CAP_SYS_ADMIN in the initial namespace)".into()
        }
        Errno::ENODEV => "the kernel has no overlay filesystem (modprobe overlay)".into(),
        Errno::ENOENT => "the lower, upper or work dir, or the target, does not exist".into(),
        Errno::ENOTDIR => "the lower, upper or work dir, or the target, is not a directory".into(),
        Errno::EBUSY => "the upper or work dir is already in use by another overlay mount".into(),
        Errno::ELOOP => "the lower dir is too deeply stacked (a passthrough FUSE mount can be a \
                         lower only at stack depth 1)"
            .into(),
        Errno::EINVAL => {
            "overlayfs rejected the options: the upper/work dir is on a filesystem it \
                          cannot use, the work dir is not empty in a bad way, or the layer was \
                          created over a different lower with index=on (see dmesg for the kernel's \
                          reason)"
                .into()
        }
        Errno::ESTALE => {
            "the layer's index or origin xattrs refer to a different lower filesystem \
                          (the layer was used over another base; reset it)"
                .into()
        }
        other => other.desc().into(),
    }
}

/// Mount points of overlay mounts in `mountinfo` whose upperdir is `upper`.
fn overlay_mounts_with_upper(mountinfo: &str, upper: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount_point), Some(fstype), Some(super_opts)) =
            (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        if *fstype != "overlay" {
            continue;
        }
        let has_upper = super_opts.split(',').any(|opt| {
            opt.strip_prefix("upperdir=")
                .is_some_and(|u| Path::new(&unescape_mount_field(u)) == upper)
        });
        if has_upper {
            found.push(PathBuf::from(unescape_mount_field(mount_point)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_matched_by_upper_dir() {
        let text = "\
36 25 0:32 / /mnt/a\\040b rw,relatime shared:1 - overlay thinnode-overlay rw,lowerdir=/l,upperdir=/x/y\\040z/upper,workdir=/x/y\\040z/work
37 25 0:33 / /mnt/c rw - overlay o rw,lowerdir=/l,upperdir=/other/upper,workdir=/other/work
38 25 0:34 / /mnt/d rw - ext4 /dev/vda rw,upperdir=/x/y z/upper
garbage line";
        assert_eq!(
            overlay_mounts_with_upper(text, Path::new("/x/y z/upper")),
            vec![PathBuf::from("/mnt/a b")]
        );
        assert!(overlay_mounts_with_upper(text, Path::new("/nope")).is_empty());
    }

    #[test]
    fn option_paths_reject_separators() {
        assert!(option_path(Path::new("/a/b")).is_ok());
        assert!(matches!(
            option_path(Path::new("/a,b")),
            Err(Error::UnsupportedPath(_))
        ));
        assert!(matches!(
            option_path(Path::new("/a:b")),
            Err(Error::UnsupportedPath(_))
        ));
    }

    #[test]
    fn unescape_handles_truncated_escapes() {
        assert_eq!(unescape_mount_field("a\\040b"), "a b");
        assert_eq!(unescape_mount_field("a\\04"), "a\\04");
        assert_eq!(unescape_mount_field("\\"), "\\");
    }
}
