//! Reading and writing the `.fl` file: an SQLite database with the tables `inode`, `extra`, `block`,
//! `tag` and `route`, created with exactly the schema rfs uses (docs/flist.md).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use crate::codec::{Block, BLOCK_SIZE};
use crate::routes::Route;
use crate::FlistError;

/// The 16 bytes every SQLite 3 database file starts with.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The tables an flist has (all five must be present for a file to be taken as an flist).
pub const TABLES: [&str; 5] = ["inode", "extra", "block", "tag", "route"];

/// The schema rfs creates (`sqlite3 X.fl .schema` of an rfs-made flist shows these statements; SQLite
/// records them without `IF NOT EXISTS`).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER,
    name VARCHAR(255),
    size INTEGER,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    rdev INTEGER,
    ctime INTEGER,
    mtime INTEGER
);
CREATE INDEX IF NOT EXISTS parents ON inode (parent);
CREATE INDEX IF NOT EXISTS names ON inode (name);
CREATE TABLE IF NOT EXISTS extra (
    ino INTEGER PRIMARY KEY,
    data VARCHAR(4096)
);
CREATE TABLE IF NOT EXISTS block (
    ino INTEGER,
    id VARCHAR(32),
    key VARCHAR(32)
);
CREATE INDEX IF NOT EXISTS block_ino ON block (ino);
CREATE TABLE IF NOT EXISTS tag (
    key VARCHAR(10) PRIMARY KEY,
    value VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS route (
    start integer, -- one byte hash prefix
    end integer, -- one byte hash prefix
    url VARCHAR(2048)
);
";

/// The inode number of an flist's root directory (its parent is 0 and its name `/`).
pub const ROOT_INO: u64 = 1;

/// `S_IFMT` and the file type bits of `st_mode`.
const S_IFMT: u32 = 0o170000;

/// The type of an flist inode, from the type bits of its `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    /// `S_IFDIR`.
    Directory,
    /// `S_IFREG`.
    Regular,
    /// `S_IFLNK`: the target is in the `extra` table.
    Symlink,
    /// `S_IFCHR`.
    CharDevice,
    /// `S_IFBLK`.
    BlockDevice,
    /// `S_IFIFO`.
    Fifo,
    /// `S_IFSOCK`.
    Socket,
}

impl FileType {
    /// The type of a full `st_mode`; `None` for unknown type bits.
    pub fn of_mode(mode: u32) -> Option<FileType> {
        Some(match mode & S_IFMT {
            0o040000 => FileType::Directory,
            0o100000 => FileType::Regular,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            _ => return None,
        })
    }

    /// The `S_IF*` bits of this type.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Directory => 0o040000,
            FileType::Regular => 0o100000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
        }
    }
}

/// One row of the `inode` table with its symlink target and its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlInode {
    /// Inode number (`ino`; the root is [`ROOT_INO`]).
    pub ino: u64,
    /// The directory holding it (0 for the root).
    pub parent: u64,
    /// Its name in the parent (`/` for the root); rfs writes UTF-8.
    pub name: Vec<u8>,
    /// `st_size` when packed (directories: the directory's own size, e.g. 4096).
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Device number of device nodes.
    pub rdev: u64,
    /// `st_ctime`, whole seconds.
    pub ctime: i64,
    /// `st_mtime`, whole seconds.
    pub mtime: i64,
    /// Symlink target (`extra.data`).
    pub target: Option<Vec<u8>>,
    /// The file's blocks in order (rowid order of the `block` table).
    pub blocks: Vec<Block>,
}

impl FlInode {
    /// The inode's type (validated when the flist was read).
    pub fn file_type(&self) -> Option<FileType> {
        FileType::of_mode(self.mode)
    }

    /// Permission bits (`mode & 0o7777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// A whole flist read into memory and checked: a tree rooted at inode 1, blocks matching sizes, routes
/// and tags.
#[derive(Debug, Clone)]
pub struct Flist {
    inodes: Vec<FlInode>,
    index: HashMap<u64, usize>,
    children: HashMap<u64, Vec<usize>>,
    /// The route table: where blocks are, by the first byte of their id.
    pub routes: Vec<Route>,
    /// The tag table (key, value), in key order.
    pub tags: Vec<(String, String)>,
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> FlistError + '_ {
    move |source| FlistError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `head` (the first bytes of a file) starts like an SQLite 3 database.
pub fn is_sqlite(head: &[u8]) -> bool {
    head.starts_with(SQLITE_HEADER)
}

/// Whether the file at `path` starts like an SQLite database (reads its first 16 bytes).
pub fn starts_like_sqlite(path: &Path) -> Result<bool, FlistError> {
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path)
        .map_err(|e| FlistError::io(format!("open {}", path.display()), e))?;
    let mut filled = 0;
    while filled < head.len() {
        match f.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(FlistError::io(format!("read {}", path.display()), e)),
        }
    }
    Ok(is_sqlite(&head[..filled]))
}

/// Whether the file at `path` is an flist: an SQLite database with the rfs tables (judged by content,
/// not by name). Files that are not SQLite databases are `Ok(false)` without opening them as one.
pub fn is_flist(path: &Path) -> Result<bool, FlistError> {
    if !starts_like_sqlite(path)? {
        return Ok(false);
    }
    let conn = open_read_only(path)?;
    Ok(missing_tables(&conn, path)?.is_empty())
}

fn open_read_only(path: &Path) -> Result<Connection, FlistError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err(path))
}

fn missing_tables(conn: &Connection, path: &Path) -> Result<Vec<&'static str>, FlistError> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .map_err(sql_err(path))?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql_err(path))?
        .collect::<Result<_, _>>()
        .map_err(sql_err(path))?;
    Ok(TABLES
        .iter()
        .copied()
        .filter(|t| !names.iter().any(|n| n == t))
        .collect())
}

/// Reads a column as raw bytes (TEXT or BLOB); NULL as empty.
fn bytes_of(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
        ValueRef::Null => Vec::new(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(f) => f.to_string().into_bytes(),
    })
}

fn text_of(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    Ok(String::from_utf8_lossy(&bytes_of(row, i)?).into_owned())
}

fn int_of(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<i64> {
    Ok(row.get::<_, Option<i64>>(i)?.unwrap_or(0))
}

fn invalid(path: &Path, reason: String) -> FlistError {
    FlistError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// Why `path` (which failed [`is_flist`]) is not an flist: a legacy tar.gz flist or something else.
fn not_an_flist(path: &Path) -> FlistError {
    let mut head = [0u8; 2];
    let gz = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == [0x1f, 0x8b];
    FlistError::NotAnFlist {
        path: path.to_path_buf(),
        reason: if gz {
            "a gzip file: a legacy (v1, tar.gz) flist, which this tool does not read; \
             convert it to the .fl format with the hub first"
                .into()
        } else {
            "not an SQLite database with the rfs tables (inode, extra, block, tag, route)".into()
        },
    }
}

/// The `extra` table: symlink targets by inode.
fn read_targets(conn: &Connection, path: &Path) -> Result<HashMap<u64, Vec<u8>>, FlistError> {
    let e = sql_err(path);
    let mut targets = HashMap::new();
    let mut stmt = conn.prepare("SELECT ino, data FROM extra").map_err(&e)?;
    let rows = stmt
        .query_map([], |r| Ok((int_of(r, 0)?, bytes_of(r, 1)?)))
        .map_err(&e)?;
    for row in rows {
        let (ino, data) = row.map_err(&e)?;
        targets.insert(ino as u64, data);
    }
    Ok(targets)
}

/// The `inode` table in inode order, each with its target from `targets` and no blocks yet.
fn read_inodes(
    conn: &Connection,
    path: &Path,
    mut targets: HashMap<u64, Vec<u8>>,
) -> Result<Vec<FlInode>, FlistError> {
    let e = sql_err(path);
    let mut inodes = Vec::new();
    let mut stmt = conn
        .prepare(
            "SELECT ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime \
             FROM inode ORDER BY ino",
        )
        .map_err(&e)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                int_of(r, 0)?,
                int_of(r, 1)?,
                bytes_of(r, 2)?,
                [int_of(r, 3)?, int_of(r, 4)?, int_of(r, 5)?, int_of(r, 6)?],
                [int_of(r, 7)?, int_of(r, 8)?, int_of(r, 9)?],
            ))
        })
        .map_err(&e)?;
    for row in rows {
        let (ino, parent, name, [size, uid, gid, mode], [rdev, ctime, mtime]) = row.map_err(&e)?;
        let field =
            |what: &str, v: i64| invalid(path, format!("inode {ino}: {what} {v} is out of range"));
        if ino <= 0 {
            return Err(invalid(path, format!("inode number {ino} is not positive")));
        }
        let ino = ino as u64;
        inodes.push(FlInode {
            ino,
            parent: u64::try_from(parent).map_err(|_| field("parent", parent))?,
            name,
            size: u64::try_from(size).map_err(|_| field("size", size))?,
            uid: u32::try_from(uid).map_err(|_| field("uid", uid))?,
            gid: u32::try_from(gid).map_err(|_| field("gid", gid))?,
            mode: u32::try_from(mode).map_err(|_| field("mode", mode))?,
            rdev: rdev as u64,
            ctime,
            mtime,
            target: targets.remove(&ino),
            blocks: Vec::new(),
        });
    }
    Ok(inodes)
}

/// The `block` table, in row order, appended to the inodes they name (`index`: inode → position).
fn read_blocks(
    conn: &Connection,
    path: &Path,
    inodes: &mut [FlInode],
    index: &HashMap<u64, usize>,
) -> Result<(), FlistError> {
    let e = sql_err(path);
    let mut stmt = conn
        .prepare("SELECT ino, id, key FROM block ORDER BY rowid")
        .map_err(&e)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((int_of(r, 0)?, bytes_of(r, 1)?, bytes_of(r, 2)?))
        })
        .map_err(&e)?;
    for row in rows {
        let (ino, id, key) = row.map_err(&e)?;
        let (Ok(id), Ok(key)) = (<[u8; 32]>::try_from(id), <[u8; 32]>::try_from(key)) else {
            return Err(invalid(
                path,
                format!("a block of inode {ino} does not have a 32-byte id and key"),
            ));
        };
        let slot = index
            .get(&(ino as u64))
            .and_then(|&i| inodes.get_mut(i))
            .ok_or_else(|| invalid(path, format!("a block names inode {ino}, which is absent")))?;
        slot.blocks.push(Block { id, key });
    }
    Ok(())
}

/// The `route` table, in row order.
fn read_routes(conn: &Connection, path: &Path) -> Result<Vec<Route>, FlistError> {
    let e = sql_err(path);
    let mut routes = Vec::new();
    let mut stmt = conn
        .prepare("SELECT start, \"end\", url FROM route ORDER BY rowid")
        .map_err(&e)?;
    let rows = stmt
        .query_map([], |r| Ok((int_of(r, 0)?, int_of(r, 1)?, text_of(r, 2)?)))
        .map_err(&e)?;
    for row in rows {
        let (start, end, url) = row.map_err(&e)?;
        let (Ok(start), Ok(end)) = (u8::try_from(start), u8::try_from(end)) else {
            return Err(invalid(
                path,
                format!("route {start}-{end} ({url}) is not a range of bytes 0-255"),
            ));
        };
        routes.push(Route { start, end, url });
    }
    Ok(routes)
}

/// The `tag` table, by key.
fn read_tags(conn: &Connection, path: &Path) -> Result<Vec<(String, String)>, FlistError> {
    let e = sql_err(path);
    let mut stmt = conn
        .prepare("SELECT key, value FROM tag ORDER BY key")
        .map_err(&e)?;
    let rows = stmt
        .query_map([], |r| Ok((text_of(r, 0)?, text_of(r, 1)?)))
        .map_err(&e)?;
    rows.map(|row| row.map_err(&e)).collect()
}

impl Flist {
    /// Reads and checks the flist at `path`. Errors name the problem: not an SQLite file, a missing
    /// table, a block row that is not 32-byte id and key, a block count that does not match a file's size,
    /// an inode not reachable from the root, duplicate names, an unknown file type.
    pub fn read(path: &Path) -> Result<Flist, FlistError> {
        if !is_flist(path)? {
            return Err(not_an_flist(path));
        }
        let conn = open_read_only(path)?;
        let targets = read_targets(&conn, path)?;
        let mut inodes = read_inodes(&conn, path, targets)?;
        let index: HashMap<u64, usize> =
            inodes.iter().enumerate().map(|(i, n)| (n.ino, i)).collect();
        read_blocks(&conn, path, &mut inodes, &index)?;
        let mut flist = Flist {
            inodes,
            index,
            children: HashMap::new(),
            routes: read_routes(&conn, path)?,
            tags: read_tags(&conn, path)?,
        };
        flist.check_tree().map_err(|reason| invalid(path, reason))?;
        Ok(flist)
    }

    /// Builds the directory index and checks the tree; the error is the reason.
    fn check_tree(&mut self) -> Result<(), String> {
        let root = self
            .inode(ROOT_INO)
            .ok_or("there is no root inode (ino 1)")?;
        if root.parent != 0 || root.file_type() != Some(FileType::Directory) {
            return Err("inode 1 is not a root directory (parent 0, a directory mode)".into());
        }
        let mut children: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, n) in self.inodes.iter().enumerate() {
            let kind = n.file_type().ok_or_else(|| {
                format!(
                    "inode {} has an unknown file type (mode {:o})",
                    n.ino, n.mode
                )
            })?;
            if n.ino == ROOT_INO {
                continue;
            }
            if n.parent == 0 {
                return Err(format!("inode {} is a second root (parent 0)", n.ino));
            }
            let parent = self.inode(n.parent).ok_or_else(|| {
                format!("inode {} names parent {}, which is absent", n.ino, n.parent)
            })?;
            if parent.file_type() != Some(FileType::Directory) {
                return Err(format!(
                    "inode {} names parent {}, which is not a directory",
                    n.ino, n.parent
                ));
            }
            if n.name.is_empty() || n.name == b"." || n.name == b".." || n.name.contains(&b'/') {
                return Err(format!(
                    "inode {} has an invalid name {:?}",
                    n.ino,
                    String::from_utf8_lossy(&n.name)
                ));
            }
            match kind {
                FileType::Regular => {
                    let want = n.size.div_ceil(BLOCK_SIZE as u64);
                    if n.blocks.len() as u64 != want {
                        return Err(format!(
                            "file inode {} ({} bytes) has {} blocks, its size needs {want}",
                            n.ino,
                            n.size,
                            n.blocks.len()
                        ));
                    }
                }
                FileType::Symlink if n.target.is_none() => {
                    return Err(format!("symlink inode {} has no target", n.ino));
                }
                _ => {}
            }
            if kind != FileType::Regular && !n.blocks.is_empty() {
                return Err(format!(
                    "inode {} has blocks but is not a regular file",
                    n.ino
                ));
            }
            children.entry(n.parent).or_default().push(i);
        }
        for (dir, list) in children.iter_mut() {
            list.sort_by(|a, b| self.inodes[*a].name.cmp(&self.inodes[*b].name));
            if let Some(w) = list
                .windows(2)
                .find(|w| self.inodes[w[0]].name == self.inodes[w[1]].name)
            {
                return Err(format!(
                    "directory inode {dir} has two entries named {:?}",
                    String::from_utf8_lossy(&self.inodes[w[0]].name)
                ));
            }
        }
        // Every inode must hang below the root (parent pointers can form loops apart from it).
        let mut reached = 1usize;
        let mut stack = vec![ROOT_INO];
        while let Some(d) = stack.pop() {
            for &c in children.get(&d).map(Vec::as_slice).unwrap_or_default() {
                reached += 1;
                let n = &self.inodes[c];
                if n.file_type() == Some(FileType::Directory) {
                    stack.push(n.ino);
                }
            }
        }
        if reached != self.inodes.len() {
            return Err(format!(
                "{} inode(s) are not reachable from the root",
                self.inodes.len() - reached
            ));
        }
        self.children = children;
        Ok(())
    }

    /// The root directory.
    pub fn root(&self) -> &FlInode {
        // check_tree guarantees it.
        &self.inodes[self.index[&ROOT_INO]]
    }

    /// The inode numbered `ino`.
    pub fn inode(&self, ino: u64) -> Option<&FlInode> {
        self.index.get(&ino).and_then(|&i| self.inodes.get(i))
    }

    /// Every inode, in inode-number order.
    pub fn inodes(&self) -> &[FlInode] {
        &self.inodes
    }

    /// The entries of directory `ino`, sorted by name.
    pub fn children(&self, ino: u64) -> impl Iterator<Item = &FlInode> {
        self.children
            .get(&ino)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|&i| self.inodes.get(i))
    }

    /// The path of `ino` from the root (`/a/b`), for messages.
    pub fn path_of(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let Some(n) = self.inode(cur) else { break };
            parts.push(String::from_utf8_lossy(&n.name).into_owned());
            cur = n.parent;
            if parts.len() > self.inodes.len() {
                break;
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}

/// An inode to add with [`FlistWriter::add_inode`].
#[derive(Clone, Debug)]
pub struct NewFlInode<'a> {
    /// Parent directory (0 for the root, which must be added first).
    pub parent: u64,
    /// Name (`/` for the root); must be UTF-8, which is what rfs reads.
    pub name: &'a str,
    /// `st_size` (regular files: content length; symlinks: target length; directories: e.g. 4096).
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Full `st_mode`.
    pub mode: u32,
    /// Device number.
    pub rdev: u64,
    /// Change time, seconds.
    pub ctime: i64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Symlink target (stored as a BLOB, as rfs does: any bytes).
    pub target: Option<&'a [u8]>,
}

/// Writes an flist: a new SQLite file with the rfs schema, filled in one transaction and moved into
/// place by [`FlistWriter::finish`] (a failed write leaves no partial file under the final name).
pub struct FlistWriter {
    conn: Connection,
    temp: tempfile::TempPath,
    path: PathBuf,
}

impl std::fmt::Debug for FlistWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlistWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FlistWriter {
    /// Starts writing the flist that [`FlistWriter::finish`] will put at `path`.
    pub fn create(path: &Path) -> Result<FlistWriter, FlistError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let temp = tempfile::Builder::new()
            .prefix(".fl-")
            .tempfile_in(dir)
            .map_err(|e| {
                FlistError::io(format!("create a temporary file in {}", dir.display()), e)
            })?
            .into_temp_path();
        let e = sql_err(path);
        let conn = Connection::open(&temp).map_err(&e)?;
        conn.execute_batch("PRAGMA journal_mode = DELETE;")
            .map_err(&e)?;
        conn.execute_batch(SCHEMA).map_err(&e)?;
        conn.execute_batch("BEGIN").map_err(&e)?;
        Ok(FlistWriter {
            conn,
            temp,
            path: path.to_path_buf(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> FlistError + '_ {
        sql_err(&self.path)
    }

    /// Adds an inode (the root first, with parent 0 and name `/`); returns its inode number.
    pub fn add_inode(&mut self, n: &NewFlInode<'_>) -> Result<u64, FlistError> {
        let e = self.err();
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .map_err(&e)?;
        stmt.execute(params![
            n.parent as i64,
            n.name,
            n.size as i64,
            n.uid,
            n.gid,
            n.mode,
            n.rdev as i64,
            n.ctime,
            n.mtime
        ])
        .map_err(&e)?;
        let ino = self.conn.last_insert_rowid() as u64;
        if let Some(target) = n.target {
            let mut stmt = self
                .conn
                .prepare_cached("INSERT INTO extra (ino, data) VALUES (?, ?)")
                .map_err(&e)?;
            stmt.execute(params![ino as i64, target]).map_err(&e)?;
        }
        Ok(ino)
    }

    /// Appends a block to file `ino` (blocks of a file must be added in file order).
    pub fn add_block(&mut self, ino: u64, block: &Block) -> Result<(), FlistError> {
        let e = self.err();
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO block (ino, id, key) VALUES (?, ?, ?)")
            .map_err(&e)?;
        stmt.execute(params![ino as i64, &block.id[..], &block.key[..]])
            .map_err(&e)?;
        Ok(())
    }

    /// Adds a route row.
    pub fn add_route(&mut self, route: &Route) -> Result<(), FlistError> {
        let e = self.err();
        self.conn
            .execute(
                "INSERT INTO route (start, \"end\", url) VALUES (?, ?, ?)",
                params![route.start, route.end, route.url],
            )
            .map_err(&e)?;
        Ok(())
    }

    /// Sets a tag (replacing an earlier value of the same key, as `rfs config tag add` does).
    pub fn set_tag(&mut self, key: &str, value: &str) -> Result<(), FlistError> {
        let e = self.err();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO tag (key, value) VALUES (?, ?)",
                params![key, value],
            )
            .map_err(&e)?;
        Ok(())
    }

    /// Commits, syncs and moves the file into place; returns its size in bytes.
    pub fn finish(self) -> Result<u64, FlistError> {
        let FlistWriter { conn, temp, path } = self;
        conn.execute_batch("COMMIT").map_err(sql_err(&path))?;
        conn.close().map_err(|(_, e)| sql_err(&path)(e))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&temp)
            .map_err(|e| FlistError::io(format!("open {}", temp.display()), e))?;
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .and_then(|_| file.sync_all())
            .map_err(|e| FlistError::io(format!("sync {}", temp.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| FlistError::io(format!("stat {}", temp.display()), e))?
            .len();
        temp.persist(&path)
            .map_err(|e| FlistError::io(format!("rename into {}", path.display()), e.error))?;
        Ok(len)
    }
}
