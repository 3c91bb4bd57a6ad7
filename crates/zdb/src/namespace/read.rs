//! The read path: key lookups, payload reads straight into the caller's buffer, CHECK and DATA RAW.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::BytesMut;

use super::{KeyEntry, Namespace};
use crate::format::data_file::{DATA_ENTRY_HEADER_LEN, DATA_HEADER_LEN};
use crate::format::{zdb_crc32, DataEntryHeader, IndexRecord};

/// A raw data entry (DATA RAW).
#[derive(Debug)]
pub struct RawEntry {
    /// Entry header.
    pub header: DataEntryHeader,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Namespace {
    /// Looks a key up, including deleted ones.
    pub fn lookup(&self, key: &[u8]) -> Option<KeyEntry> {
        self.keys.read().map.get(key).copied()
    }

    /// Looks a live key up.
    pub fn get_entry(&self, key: &[u8]) -> Option<KeyEntry> {
        self.lookup(key).filter(|e| !e.deleted)
    }

    pub(super) fn data_file(&self, id: u32) -> Option<Arc<File>> {
        self.files.read().data.get(id as usize).cloned()
    }

    pub(super) fn index_file(&self, id: u32) -> Option<Arc<File>> {
        self.files.read().index.get(id as usize).cloned()
    }

    /// Appends the payload of `e` (a key of `key_len` bytes) to `out`, read straight from the data file
    /// into the buffer's spare room (no zero-filling first). On error `out` may hold part of it.
    pub fn append_payload(
        &self,
        key_len: usize,
        e: &KeyEntry,
        out: &mut BytesMut,
    ) -> io::Result<()> {
        let len = e.length as usize;
        out.reserve(len);
        // Read under the (shared) files lock rather than cloning the handle: fewer atomic operations on the
        // hot path; only a file rotation waits for it.
        let files = self.files.read();
        let f = files
            .data
            .get(e.dataid as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "data file missing"))?;
        let mut at = e.offset as u64 + DATA_ENTRY_HEADER_LEN as u64 + key_len as u64;
        if let Some(bytes) = files
            .maps
            .get(e.dataid as usize)
            .and_then(Option::as_ref)
            .and_then(|m| m.get(at as usize..at as usize + len))
        {
            // No system call: the map shares the page cache `pread` would copy from.
            out.extend_from_slice(bytes);
            return Ok(());
        }
        let mut left = len;
        while left > 0 {
            let spare = out.spare_capacity_mut();
            let want = left.min(spare.len());
            // SAFETY: pread writes at most `want` bytes, and `want` is within the spare capacity.
            let n = unsafe {
                libc::pread(
                    f.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    want,
                    at as libc::off_t,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let n = n as usize;
            // SAFETY: pread initialized the first `n` bytes of the spare capacity.
            unsafe { out.set_len(out.len() + n) };
            left -= n;
            at += n as u64;
        }
        Ok(())
    }

    /// Reads the payload of a data entry located by an index record.
    pub fn read_record_payload(&self, r: &IndexRecord) -> io::Result<Vec<u8>> {
        let f = self
            .data_file(r.dataid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "data file missing"))?;
        let mut out = vec![0u8; r.length as usize];
        let at = r.offset as u64 + DATA_ENTRY_HEADER_LEN as u64 + r.key.len() as u64;
        f.read_exact_at(&mut out, at)?;
        Ok(out)
    }

    /// Verifies the stored payload of `e` against its checksum (CHECK).
    pub fn check(&self, key: &[u8], e: &KeyEntry) -> io::Result<bool> {
        let f = self
            .data_file(e.dataid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "data file missing"))?;
        let mut hdr = [0u8; DATA_ENTRY_HEADER_LEN];
        if f.read_exact_at(&mut hdr, e.offset as u64).is_err() {
            return Ok(false);
        }
        let Ok(h) = DataEntryHeader::decode(&hdr) else {
            return Ok(false);
        };
        if h.idlength as usize != key.len() || h.datalength != e.length {
            return Ok(false);
        }
        let mut payload = BytesMut::new();
        if self.append_payload(key.len(), e, &mut payload).is_err() {
            return Ok(false);
        }
        Ok(zdb_crc32(&payload) == h.crc && h.crc == e.crc)
    }

    /// Reads a raw data entry (DATA RAW).
    pub fn data_raw(&self, fileid: u32, offset: u64) -> Option<RawEntry> {
        let f = self.data_file(fileid)?;
        let len = f.metadata().ok()?.len();
        if offset < DATA_HEADER_LEN as u64 || offset + DATA_ENTRY_HEADER_LEN as u64 > len {
            return None;
        }
        let mut hdr = [0u8; DATA_ENTRY_HEADER_LEN];
        f.read_exact_at(&mut hdr, offset).ok()?;
        let header = DataEntryHeader::decode(&hdr).ok()?;
        if offset + header.total_len() > len {
            return None;
        }
        let mut key = vec![0u8; header.idlength as usize];
        f.read_exact_at(&mut key, offset + DATA_ENTRY_HEADER_LEN as u64)
            .ok()?;
        let mut payload = vec![0u8; header.datalength as usize];
        f.read_exact_at(
            &mut payload,
            offset + DATA_ENTRY_HEADER_LEN as u64 + header.idlength as u64,
        )
        .ok()?;
        Some(RawEntry {
            header,
            key,
            payload,
        })
    }
}
