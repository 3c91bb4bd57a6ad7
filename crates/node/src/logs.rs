//! A node's logs: `node.log` (the command's output plus thinnode's own lines about it) and
//! `supervisor.log` (the supervisor and its mount daemon), both rotated by size: when a log reaches its
//! limit it becomes `LOG.1`, the older ones shift up to `LOG.KEEP`, and the oldest is dropped. Rotation
//! happens in the supervisor, which owns the files: the node command and the mount daemon write into
//! pipes it reads, so no process ever keeps writing into a rotated file.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result};
use crate::state::now_secs;

/// How big a log grows before it is rotated, and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLimits {
    /// Size in bytes at which the log is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`LOG.1` … `LOG.KEEP`); 0 keeps none (the log is truncated).
    pub keep: u32,
}

impl Default for LogLimits {
    /// 10 MB, five rotated files: at most 60 MB per log.
    fn default() -> Self {
        LogLimits {
            max_bytes: 10_000_000,
            keep: 5,
        }
    }
}

/// The name of rotated file `n` of `path` (`node.log.1`, …).
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Shifts `path` to `path.1` (and `path.1` to `path.2`, …, dropping `path.KEEP`).
fn shift(path: &Path, keep: u32) -> io::Result<()> {
    if keep == 0 {
        return fs::remove_file(path).or_else(ignore_missing);
    }
    fs::remove_file(rotated(path, keep)).or_else(ignore_missing)?;
    for n in (1..keep).rev() {
        fs::rename(rotated(path, n), rotated(path, n + 1)).or_else(ignore_missing)?;
    }
    fs::rename(path, rotated(path, 1)).or_else(ignore_missing)
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// An append-only log file that rotates itself when it reaches its size limit.
#[derive(Debug)]
pub(crate) struct RotatingLog {
    path: PathBuf,
    limits: LogLimits,
    file: fs::File,
    len: u64,
}

impl RotatingLog {
    /// Opens (appends to) the log at `path`, rotating it first if it is already over its limit.
    pub(crate) fn open(path: &Path, limits: LogLimits) -> Result<RotatingLog> {
        let (file, len) = open_append(path)?;
        let mut log = RotatingLog {
            path: path.to_path_buf(),
            limits,
            file,
            len,
        };
        if log.len >= limits.max_bytes {
            log.rotate()?;
        }
        Ok(log)
    }

    /// The file currently written (for handing its descriptor to a child).
    pub(crate) fn file(&self) -> &fs::File {
        &self.file
    }

    /// Appends `bytes`; rotates first when they would take the file past its limit (a non-empty file
    /// only, so one huge write still lands somewhere). Returns whether the file was rotated.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<bool> {
        let rotate = self.len > 0 && self.len + bytes.len() as u64 > self.limits.max_bytes;
        if rotate {
            self.rotate()?;
        }
        self.file
            .write_all(bytes)
            .map_err(io_err("write", &self.path))?;
        self.len += bytes.len() as u64;
        Ok(rotate)
    }

    /// Appends one line from thinnode itself (`[thinnode SECONDS] line`).
    pub(crate) fn line(&mut self, line: &str) -> Result<bool> {
        self.write(format!("[thinnode {}] {line}\n", now_secs()).as_bytes())
    }

    /// Rotates when the file on disk (which other processes may append to) is over the limit.
    pub(crate) fn rotate_if_full(&mut self) -> Result<bool> {
        let len = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        self.len = len;
        if len >= self.limits.max_bytes {
            self.rotate()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn rotate(&mut self) -> Result<()> {
        shift(&self.path, self.limits.keep).map_err(io_err("rotate", &self.path))?;
        let (file, len) = open_append(&self.path)?;
        self.file = file;
        self.len = len;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<(fs::File, u64)> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    Ok((file, len))
}

/// A pipe for a child's output: the read end (close-on-exec, kept here) and the write end (handed to
/// the child as its stdout or stderr).
pub(crate) fn output_pipe() -> io::Result<(fs::File, fs::File)> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((fs::File::from(read), fs::File::from(write)))
}

/// A log shared by the threads that write into it.
pub(crate) type SharedLog = Arc<Mutex<RotatingLog>>;

/// Copies everything read from `source` (a child's output pipe) into `log`, line by line, until the
/// pipe closes. Runs on its own thread.
pub(crate) fn pump(source: impl Read + Send + 'static, log: SharedLog, what: &str) {
    let name = format!("log-{what}");
    let what = what.to_string();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = Vec::with_capacity(4096);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Err(e) = log.lock().write(&line) {
                        tracing::warn!("{what} log: {e}");
                    }
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot start a log thread: {e}");
    }
}

/// The last `lines` lines of the log at `path` (reads at most its last 4 MiB) and its length.
pub fn tail(path: &Path, lines: usize) -> Result<(String, u64)> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((String::new(), 0)),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let from = len.saturating_sub(4 << 20);
    file.seek(SeekFrom::Start(from))
        .map_err(io_err("seek", path))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(io_err("read", path))?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let keep = all.len().saturating_sub(lines);
    let mut out = all.get(keep..).unwrap_or(&[]).join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok((out, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_by_size_and_keep_n() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.log");
        let limits = LogLimits {
            max_bytes: 100,
            keep: 2,
        };
        let mut log = RotatingLog::open(&path, limits).expect("open");
        for i in 0..25 {
            log.write(format!("line {i:04} of the log\n").as_bytes())
                .expect("write");
        }
        // 21-byte lines, at most 100 bytes a file: 4 lines per file.
        let current = fs::read_to_string(&path).expect("read");
        assert!(current.len() <= 100, "{current}");
        assert!(current.ends_with("line 0024 of the log\n"), "{current}");
        let one = fs::read_to_string(rotated(&path, 1)).expect("log.1");
        assert!(one.starts_with("line 0020"), "{one}");
        let two = fs::read_to_string(rotated(&path, 2)).expect("log.2");
        assert!(two.starts_with("line 0016"), "{two}");
        assert!(!rotated(&path, 3).exists(), "only two rotated files kept");
        assert_eq!(tail(&path, 5).expect("tail").0, "line 0024 of the log\n");
        // A log found over its limit at open is rotated first.
        fs::write(&path, vec![b'x'; 150]).expect("write");
        let log = RotatingLog::open(&path, limits).expect("reopen");
        assert_eq!(log.len, 0);
        assert_eq!(fs::metadata(rotated(&path, 1)).expect("log.1").len(), 150);
    }

    #[test]
    fn keep_zero_truncates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.log");
        let limits = LogLimits {
            max_bytes: 10,
            keep: 0,
        };
        let mut log = RotatingLog::open(&path, limits).expect("open");
        log.write(b"0123456789").expect("write");
        log.write(b"abc").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"abc");
        assert!(!rotated(&path, 1).exists());
    }
}
