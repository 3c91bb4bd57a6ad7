//! A node's data directory: the image mounted read-only (lazily, through the host cache) with the node's
//! write layer stacked on top, both served by this process.
//!
//! The read-only image mount lives inside the layer directory (`DIR/lower`), so each layer carries its own
//! view of the base and nothing else on the host has to be arranged.
//!
//! No second hop: a blocks layer reads base file contents in-process from the image's read engine
//! ([`ImageBase`]: the host-cache file, or the stores), not through the FUSE mount at `DIR/lower` (which
//! still gives it the namespace and metadata), and serves a read-only open of an unwritten base file by
//! passthrough straight to the base's sealed host-cache file. An overlay layer's lower is the image mount
//! itself, whose sealed files are passthrough: overlayfs' lower reads then go to the host-cache files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mount::{BaseReader, OpenFile};
use mount::{MountConfig, MountRecord, MountedImage};

use crate::{
    io_err, BaseFile, BaseFiles, BlocksLayer, BlocksMount, BlocksOptions, Error, LayerKind,
    LayerMetadata, OverlayLayer, OverlayOptions, Result,
};

/// The image's files read through its read engine in this process (see the module docs).
struct ImageBase {
    reader: Arc<BaseReader>,
}

/// One image file opened through [`ImageBase`].
struct ImageBaseFile {
    reader: Arc<BaseReader>,
    file: Arc<OpenFile>,
}

fn read_error(e: mount::ReadError) -> io::Error {
    tracing::error!("base read: {e}");
    io::Error::from_raw_os_error(libc::EIO)
}

impl BaseFiles for ImageBase {
    fn open(&self, rel: &Path) -> io::Result<Arc<dyn BaseFile>> {
        let ino = self.reader.lookup_path(rel).map_err(|e| match e {
            mount::ReadError::NoSuchPath(_) => io::Error::from_raw_os_error(libc::ENOENT),
            other => read_error(other),
        })?;
        let file = self.reader.open(ino).map_err(read_error)?;
        Ok(Arc::new(ImageBaseFile {
            reader: Arc::clone(&self.reader),
            file,
        }))
    }

    fn passthrough_opened(&self) {
        self.reader
            .fetcher()
            .metrics()
            .layer_passthrough_opens
            .inc();
    }
}

impl BaseFile for ImageBaseFile {
    fn size(&self) -> u64 {
        self.file.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.reader
            .read_into(&self.file, offset, buf, None)
            .map_err(read_error)
    }

    fn seek(&self, offset: u64, whence: i32) -> io::Result<Option<u64>> {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        self.reader
            .seek(self.file.ino(), offset, data)
            .map_err(read_error)
    }

    fn passthrough_backing(&self) -> Option<fs::File> {
        if !self.file.is_sealed() {
            return None;
        }
        self.file.cache_file()?.backing().ok()
    }
}

/// Name of the read-only image mountpoint inside a layer directory.
pub const LOWER_DIR: &str = "lower";

/// The write layer on top of the image.
enum Top {
    Overlay(OverlayLayer),
    Blocks(BlocksMount),
}

/// An image mounted read-only with a write layer on top, served by this process until unmounted.
pub struct LayeredMount {
    image: Option<MountedImage>,
    top: Option<Top>,
    target: PathBuf,
    lower: PathBuf,
    layer_dir: PathBuf,
}

impl std::fmt::Debug for LayeredMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredMount")
            .field("target", &self.target)
            .field("lower", &self.lower)
            .field("layer_dir", &self.layer_dir)
            .finish_non_exhaustive()
    }
}

fn mount_err(context: &str) -> impl FnOnce(mount::MountError) -> Error + '_ {
    move |e| Error::MountPrecondition(format!("{context}: {e}"))
}

impl LayeredMount {
    /// Mounts `config.image` read-only at `<layer_dir>/lower` (`config.mountpoint` is replaced by that
    /// path; cache, stores, trust and fetch settings are used as given), then the write layer in
    /// `layer_dir` at `target`: created with `kind` if `layer_dir` holds no layer yet, an error if it
    /// holds one of another kind. Returns once `target` answers.
    pub fn mount(
        mut config: MountConfig,
        layer_dir: &Path,
        kind: LayerKind,
        target: &Path,
    ) -> Result<LayeredMount> {
        fs::create_dir_all(layer_dir).map_err(io_err("create directory", layer_dir))?;
        let layer_dir = fs::canonicalize(layer_dir).map_err(io_err("resolve", layer_dir))?;
        match LayerMetadata::read_kind(&layer_dir, kind) {
            Ok(_) | Err(Error::NotALayer(_)) => {}
            Err(e) => return Err(e),
        }
        let target = mount::absolute_mountpoint(target).map_err(mount_err("mount target"))?;
        // A daemon killed earlier leaves its mounts behind: clear them first.
        if mount::is_mountpoint(&target) {
            mount::unmount_path(&target, std::time::Duration::from_secs(10))
                .map_err(mount_err("clear the old mount"))?;
        }
        if mount::is_mountpoint(&target) {
            return Err(Error::MountPrecondition(format!(
                "{} is already a mountpoint",
                target.display()
            )));
        }
        let lower = layer_dir.join(LOWER_DIR);
        if mount::is_mountpoint(&lower) {
            mount::unmount_path(&lower, std::time::Duration::from_secs(10))
                .map_err(mount_err("clear the old image mount"))?;
        }
        fs::create_dir_all(&lower).map_err(io_err("create directory", &lower))?;
        let cache_dir = config.cache.dir.clone();
        let cache_max_bytes = config.cache.max_bytes;
        let store_overrides = config.store_overrides.clone();
        let image_path = std::path::absolute(&config.image).unwrap_or(config.image.clone());
        config.mountpoint = lower.clone();
        let image = MountedImage::mount(config).map_err(mount_err("mount the image"))?;
        let mut stacked = LayeredMount {
            image: Some(image),
            top: None,
            target: target.clone(),
            lower: lower.clone(),
            layer_dir: layer_dir.clone(),
        };
        let top = match kind {
            LayerKind::Overlay => {
                let layer = OverlayLayer::open_or_create(&layer_dir, OverlayOptions::default())?;
                layer.mount(&lower, &target)?;
                Top::Overlay(layer)
            }
            LayerKind::Blocks => {
                let layer = BlocksLayer::open_or_create(&layer_dir, BlocksOptions::default())?;
                let base = stacked.image.as_ref().map(|image| {
                    Arc::new(ImageBase {
                        reader: Arc::clone(image.reader()),
                    }) as Arc<dyn BaseFiles>
                });
                Top::Blocks(layer.mount_with_base(&lower, &target, base)?)
            }
        };
        stacked.top = Some(top);
        mount::write_record(&MountRecord {
            pid: std::process::id(),
            image: image_path,
            mountpoint: target,
            cache_dir,
            cache_max_bytes,
            store_overrides,
            metrics_addr: stacked.image.as_ref().and_then(|i| i.metrics_addr()),
            stacked_on: Some(lower),
        })
        .map_err(mount_err("record the mount"))?;
        Ok(stacked)
    }

    /// Where the merged read-write view is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where the read-only image is mounted (inside the layer directory).
    pub fn lower(&self) -> &Path {
        &self.lower
    }

    /// The layer directory (absolute).
    pub fn layer_dir(&self) -> &Path {
        &self.layer_dir
    }

    /// The image mount below the layer (metrics, fetcher).
    pub fn image(&self) -> Option<&MountedImage> {
        self.image.as_ref()
    }

    /// Whether both mounts are still in place (false once something unmounted the top from outside).
    pub fn is_running(&self) -> bool {
        let top_up = match &self.top {
            Some(Top::Overlay(layer)) => overlay_mounted(layer, &self.target),
            Some(Top::Blocks(mount)) => mount.is_running(),
            None => false,
        };
        top_up && mount::is_mountpoint(&self.lower)
    }

    /// Serves until a shutdown signal arrives (see [`mount::install_shutdown_handler`]) or the top is
    /// unmounted from outside, then unmounts both.
    pub fn serve(self) -> Result<()> {
        while !mount::shutdown_requested() && self.is_running() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.unmount()
    }

    /// Unmounts the write layer, then the image below it.
    pub fn unmount(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        mount::remove_record(&self.target, std::process::id());
        let mut result = Ok(());
        match self.top.take() {
            Some(Top::Overlay(layer)) if overlay_mounted(&layer, &self.target) => {
                if let Err(e) = layer.unmount(&self.target) {
                    tracing::warn!("{e}; detaching it");
                    if let Err(errno) =
                        nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH)
                    {
                        result = Err(Error::Syscall {
                            syscall: "umount",
                            target: self.target.clone(),
                            errno,
                            explanation: "lazy detach failed".into(),
                        });
                    }
                }
            }
            Some(Top::Blocks(mount)) => {
                if let Err(e) = mount.unmount() {
                    result = Err(e);
                }
            }
            _ => {}
        }
        if let Some(image) = self.image.take() {
            if let Err(e) = image.unmount() {
                result = result.and(Err(mount_err("unmount the image")(e)));
            }
        }
        result
    }
}

fn overlay_mounted(layer: &OverlayLayer, target: &Path) -> bool {
    layer
        .mount_points()
        .map(|m| m.iter().any(|p| p == target))
        .unwrap_or(false)
}

impl Drop for LayeredMount {
    fn drop(&mut self) {
        if self.top.is_some() || self.image.is_some() {
            if let Err(e) = self.stop() {
                tracing::warn!("{e}");
            }
        }
    }
}
