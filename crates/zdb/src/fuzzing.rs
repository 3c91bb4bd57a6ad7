//! What the fuzz targets in `fuzz/` drive (feature `fuzzing` only): a real database in a temporary
//! directory, and the connection's request processing fed with arbitrary bytes.

use std::sync::Arc;

use bytes::BytesMut;

use crate::cmd::Session;
use crate::connection::{process, Stop};
use crate::db::Database;
use crate::{ServerArgs, ZdbError};

/// A database opened on a directory the caller owns.
pub struct Harness {
    db: Arc<Database>,
}

impl Harness {
    /// Opens a database with data and index directories under `dir` and small data files (64 KiB), so
    /// inputs reach file rotation.
    pub fn open(dir: &std::path::Path) -> Result<Self, ZdbError> {
        let mut args = ServerArgs::for_dirs(dir.join("data"), dir.join("index"));
        args.datasize = 64 * 1024;
        Ok(Harness {
            db: crate::server::open_database(&args)?,
        })
    }

    /// Feeds `data` to a new client session as a socket might deliver it (in two pieces), answering every
    /// complete request, until the bytes run out or the connection would be closed.
    pub fn feed(&self, data: &[u8]) {
        let Some(mut session) = Session::new(&self.db) else {
            return;
        };
        let mut out = BytesMut::new();
        let mut ranges = Vec::new();
        let mut pos = 0;
        for end in [data.len() / 2, data.len()] {
            loop {
                let (n, stop) = process(
                    &self.db,
                    &mut session,
                    &data[pos..end],
                    &mut out,
                    &mut ranges,
                );
                pos += n;
                match stop {
                    Stop::Close => return,
                    Stop::NeedMore => break,
                    Stop::Wait { .. } => continue,
                }
            }
        }
    }
}
