//! Command handlers, one module per command (or command family), and the dispatcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::db::Database;
use crate::namespace::{Namespace, WriteError, MAX_KEY_LEN};
use crate::protocol;

pub mod auth;
pub mod check;
pub mod data;
pub mod dbsize;
pub mod del;
pub mod exists;
pub mod flush;
pub mod get;
pub mod history;
pub mod hooks;
pub mod index;
pub mod info;
pub mod keycur;
pub mod keytime;
pub mod kscan;
pub mod length;
pub mod mget;
pub mod nsdel;
pub mod nsinfo;
pub mod nsjump;
pub mod nslist;
pub mod nsnew;
pub mod nsset;
pub mod ping;
pub mod reload;
pub mod scan;
pub mod select;
pub mod set;
pub mod time;
pub mod wait;

/// A client's state.
pub struct Session {
    /// The selected namespace.
    pub ns: Arc<Namespace>,
    /// Whether the client may write in `ns`.
    pub writable: bool,
    /// Whether the client is admin.
    pub admin: bool,
    /// Challenge issued by `AUTH SECURE CHALLENGE`.
    pub nonce: Option<String>,
}

impl Session {
    /// A new client: in the default namespace, admin when no admin password is set.
    pub fn new(db: &Database) -> Option<Self> {
        Some(Session {
            ns: db.default_namespace()?,
            writable: !db.protect,
            admin: db.admin_password.is_none(),
            nonce: None,
        })
    }
}

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Continue with the next request.
    Done,
    /// Send what was written, then close the connection.
    Close,
    /// Block until another client runs `command` (or any, for `*`) in the same namespace.
    Wait {
        /// Upper-case command name or `*`.
        command: &'static str,
        /// How long to wait.
        timeout: Duration,
    },
}

/// Everything a handler needs.
pub struct Ctx<'a> {
    /// The database.
    pub db: &'a Database,
    /// The client.
    pub session: &'a mut Session,
    /// Arguments, the command name first.
    pub args: &'a [&'a [u8]],
    /// Reply buffer.
    pub out: &'a mut BytesMut,
}

impl<'a> Ctx<'a> {
    /// Writes an error reply.
    pub fn error(&mut self, msg: &str) {
        protocol::error(self.out, msg);
    }

    /// Checks the exact argument count (command included) and, unless `allow_empty`, that no argument is
    /// empty; replies the 0-db error otherwise.
    pub fn args_exact(&mut self, n: usize, allow_empty: bool) -> bool {
        if self.args.len() != n {
            self.error("Unexpected arguments");
            return false;
        }
        if !allow_empty && self.args.iter().any(|a| a.is_empty()) {
            self.error("Invalid argument");
            return false;
        }
        true
    }

    /// Checks the client is admin; replies "Permission denied" otherwise.
    pub fn require_admin(&mut self) -> bool {
        if !self.session.admin {
            self.db.metrics.admin_denied();
            self.error("Permission denied");
            return false;
        }
        true
    }

    /// The key of a one-key read command (`CMD <key>`), after the checks every such command makes in
    /// 0-db's order: argument count, key length, frozen namespace. `None` once an error was replied.
    pub fn read_key(&mut self) -> Option<&'a [u8]> {
        if !self.args_exact(2, false) {
            return None;
        }
        let key = self.args.get(1).copied()?;
        if key.len() > MAX_KEY_LEN {
            self.error("Invalid key");
            return None;
        }
        if self.refuse_if_frozen() {
            return None;
        }
        Some(key)
    }

    /// The namespace name in argument 1, or "Namespace too long" replied (0-db's limit is 128 bytes).
    pub fn namespace_name(&mut self) -> Option<String> {
        if self.args.get(1).is_some_and(|a| a.len() > 128) {
            self.error("Namespace too long");
            return None;
        }
        Some(self.text(1))
    }

    /// The existing namespace named by argument 1, or "Namespace too long" / "Namespace not found"
    /// replied.
    pub fn existing_namespace(&mut self) -> Option<Arc<Namespace>> {
        let name = self.namespace_name()?;
        let ns = self.db.get(&name);
        if ns.is_none() {
            self.error("Namespace not found");
        }
        ns
    }

    /// Replies the frozen error when the namespace is frozen.
    pub fn refuse_if_frozen(&mut self) -> bool {
        if self.session.ns.is_frozen() {
            self.error(FROZEN);
            return true;
        }
        false
    }

    /// Argument `i` as UTF-8 text (lossy).
    pub fn text(&self, i: usize) -> String {
        self.args
            .get(i)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default()
    }

    /// Replies the 0-db error for a refused write.
    pub fn write_error(&mut self, e: &WriteError) {
        if let WriteError::Data(io) | WriteError::Index(io) = e {
            tracing::error!(namespace = %self.session.ns.name, "write failed: {io}");
        }
        self.error(&e.to_string());
    }
}

/// Error for a frozen namespace.
pub const FROZEN: &str = "Namespace is temporarily frozen (read-write disabled)";
/// Error for a locked namespace.
pub const LOCKED: &str = "Namespace is temporarily locked (read-only)";
/// Error for a client without write access.
pub const READ_ONLY: &str = "Namespace is in read-only mode";

type Handler = fn(&mut Ctx<'_>) -> Outcome;

/// Every supported command, upper case, with its handler.
pub const COMMANDS: &[(&str, Handler)] = &[
    // The hot commands first: lookup is a linear scan.
    ("GET", get::run),
    ("SET", set::run),
    ("SETX", set::run),
    ("MGET", mget::run),
    ("EXISTS", exists::run),
    ("DEL", del::run),
    ("PING", ping::run),
    ("TIME", time::run),
    ("AUTH", auth::run),
    ("HOOKS", hooks::run),
    ("INDEX", index::run),
    ("DATA", data::run),
    ("CHECK", check::run),
    ("LENGTH", length::run),
    ("KEYTIME", keytime::run),
    ("SCAN", scan::run_forward),
    ("SCANX", scan::run_forward),
    ("RSCAN", scan::run_backward),
    ("KSCAN", kscan::run),
    ("HISTORY", history::run),
    ("KEYCUR", keycur::run),
    ("INFO", info::run),
    ("DBSIZE", dbsize::run),
    ("NSNEW", nsnew::run),
    ("NSDEL", nsdel::run),
    ("NSLIST", nslist::run),
    ("NSSET", nsset::run),
    ("NSINFO", nsinfo::run),
    ("NSJUMP", nsjump::run),
    ("SELECT", select::run),
    ("RELOAD", reload::run),
    ("FLUSH", flush::run),
    ("WAIT", wait::run),
];

/// Index into [`COMMANDS`] of the command called `name` (case-insensitive).
pub fn find(name: &[u8]) -> Option<usize> {
    COMMANDS
        .iter()
        .position(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
}

/// Finds a command by name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<(&'static str, Handler)> {
    find(name).map(|i| COMMANDS[i])
}

/// Runs one request, writes its reply to `out` and counts it.
pub fn execute(
    db: &Database,
    session: &mut Session,
    args: &[&[u8]],
    out: &mut BytesMut,
) -> Outcome {
    let started = Instant::now();
    let mark = out.len();
    let (index, outcome) = dispatch(db, session, args, out);
    let error = out.get(mark) == Some(&b'-');
    db.metrics.request(index, error, started.elapsed());
    outcome
}

/// Finds the handler of a request and runs it; returns the command's index into [`COMMANDS`].
fn dispatch(
    db: &Database,
    session: &mut Session,
    args: &[&[u8]],
    out: &mut BytesMut,
) -> (Option<usize>, Outcome) {
    if session.ns.is_removed() {
        protocol::error(
            out,
            "Your active namespace is not available anymore (probably removed).",
        );
        return (None, Outcome::Close);
    }
    let Some(index) = args.first().and_then(|name| find(name)) else {
        protocol::error(out, "Command not supported");
        return (None, Outcome::Done);
    };
    let (command, handler) = COMMANDS[index];
    let mut ctx = Ctx {
        db,
        session,
        args,
        out,
    };
    let outcome = handler(&mut ctx);
    db.notify(&ctx.session.ns.name, command);
    (Some(index), outcome)
}
