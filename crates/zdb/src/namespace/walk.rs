//! Walking a data file entry by entry, verifying every checksum: the ground truth for crash recovery and
//! index rebuilds.

use std::fs::File;
use std::io::{self, Read};

use crate::error::{IoContext, ZdbError};
use crate::format::data_file::DATA_ENTRY_HEADER_LEN;
use crate::format::{zdb_crc32, DataEntryHeader};

/// Outcome of walking one data file.
pub(super) struct DataWalk {
    /// End of the last valid entry.
    pub(super) valid_end: u64,
    /// Why the walk stopped early, if it did.
    pub(super) torn: Option<String>,
}

/// Walks the entries of a data file from `start`, verifying every checksum; calls `each` on valid entries.
pub(super) fn walk_data_file(
    file: &File,
    start: u64,
    mut each: impl FnMut(u64, &DataEntryHeader, &[u8]) -> Result<(), ZdbError>,
) -> Result<DataWalk, ZdbError> {
    let len = file.metadata().ctx(|| "stat data file".into())?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut pos = start;
    {
        use std::io::Seek;
        reader
            .seek(io::SeekFrom::Start(start))
            .ctx(|| "seek data file".into())?;
    }
    let mut hdr = [0u8; DATA_ENTRY_HEADER_LEN];
    let mut key = Vec::new();
    let mut payload = Vec::new();
    loop {
        if pos == len {
            return Ok(DataWalk {
                valid_end: pos,
                torn: None,
            });
        }
        if pos + DATA_ENTRY_HEADER_LEN as u64 > len {
            return Ok(DataWalk {
                valid_end: pos,
                torn: Some(format!("incomplete entry header at offset {pos}")),
            });
        }
        reader
            .read_exact(&mut hdr)
            .ctx(|| "read data file".into())?;
        let h = DataEntryHeader::decode(&hdr).map_err(|e| ZdbError::Namespace {
            name: String::new(),
            reason: e.to_string(),
        })?;
        if pos + h.total_len() > len || pos + h.total_len() > u32::MAX as u64 + 1 {
            return Ok(DataWalk {
                valid_end: pos,
                torn: Some(format!(
                    "entry at offset {pos} claims {} bytes, file ends at {len}",
                    h.total_len()
                )),
            });
        }
        key.resize(h.idlength as usize, 0);
        reader
            .read_exact(&mut key)
            .ctx(|| "read data file".into())?;
        payload.resize(h.datalength as usize, 0);
        reader
            .read_exact(&mut payload)
            .ctx(|| "read data file".into())?;
        if zdb_crc32(&payload) != h.crc {
            return Ok(DataWalk {
                valid_end: pos,
                torn: Some(format!("checksum mismatch of entry at offset {pos}")),
            });
        }
        each(pos, &h, &key)?;
        pos += h.total_len();
    }
}
