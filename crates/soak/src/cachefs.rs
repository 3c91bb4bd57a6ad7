//! The host-cache filesystem: a small ext4 on a loop device, mounted for the nodes' `--cache`, which
//! the `cache-full` fault fills to ENOSPC and frees again.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::procs::Owner;

/// A mounted loop ext4.
pub struct CacheFs {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    filler: PathBuf,
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl CacheFs {
    /// Makes an ext4 of `bytes` in `WORK/cachefs.img`, attaches it to a free loop device and mounts it
    /// at `WORK/cachefs`; both are recorded in `owner`.
    pub fn create(work: &Path, bytes: u64, owner: &Owner) -> anyhow::Result<CacheFs> {
        let image = work.join("cachefs.img");
        let mountpoint = work.join("cachefs");
        std::fs::create_dir_all(&mountpoint)?;
        let f = std::fs::File::create(&image)?;
        f.set_len(bytes)?;
        drop(f);
        // No reserved blocks: root (the mount daemon) must hit ENOSPC when the filler takes the rest.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image))?;
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        owner.update(|r| r.loops.push(dev.clone()))?;
        run(Command::new("mount")
            .args(["-t", "ext4", &dev])
            .arg(&mountpoint))?;
        owner.update(|r| r.mounts.push(mountpoint.clone()))?;
        Ok(CacheFs {
            filler: mountpoint.join("soak-filler"),
            mountpoint,
        })
    }

    /// The directory the nodes use as their host cache.
    pub fn cache_dir(&self) -> PathBuf {
        self.mountpoint.join("cache")
    }

    /// Fills the filesystem until writes fail with ENOSPC; returns the bytes the filler took.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.filler)
            .with_context(|| format!("create {}", self.filler.display()))?;
        let st = nix::sys::statvfs::statvfs(&self.mountpoint)?;
        let free = st.blocks_available() * st.fragment_size();
        // Most of it at once, then written blocks until nothing more fits (fallocate leaves a little).
        if free > 0 {
            unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, free as libc::off_t) };
        }
        let mut total = f.metadata()?.len();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::End(0))?;
        let block = vec![0u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("fill the cache filesystem"),
            }
        }
        let _ = f.sync_all();
        Ok(total)
    }

    /// Removes the filler.
    pub fn free(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.filler) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove {}", self.filler.display()))
            }
            _ => Ok(()),
        }
    }

    /// Free bytes now.
    pub fn free_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.mountpoint)
            .map(|st| st.blocks_available() * st.fragment_size())
            .unwrap_or(0)
    }
}
