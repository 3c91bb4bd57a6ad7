//! Replies from a 0-db server.

use redis_protocol::resp2::types::OwnedFrame;

/// One RESP reply, as sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status line (`+OK`).
    Status(String),
    /// An error line (`-Namespace is in read-only mode`): the server's text.
    Error(String),
    /// An integer (`:1`).
    Integer(i64),
    /// A bulk string (binary-safe).
    Bulk(Vec<u8>),
    /// The nil bulk string or nil array (`$-1`, `*-1`): "no such key".
    Nil,
    /// An array of replies.
    Array(Vec<Reply>),
}

impl From<OwnedFrame> for Reply {
    fn from(frame: OwnedFrame) -> Self {
        match frame {
            OwnedFrame::SimpleString(s) => Reply::Status(String::from_utf8_lossy(&s).into_owned()),
            OwnedFrame::Error(e) => Reply::Error(e),
            OwnedFrame::Integer(i) => Reply::Integer(i),
            OwnedFrame::BulkString(b) => Reply::Bulk(b),
            OwnedFrame::Array(items) => Reply::Array(items.into_iter().map(Reply::from).collect()),
            OwnedFrame::Null => Reply::Nil,
        }
    }
}

impl Reply {
    /// A short description of the reply's kind, for protocol error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Status(_) => "status",
            Reply::Error(_) => "error",
            Reply::Integer(_) => "integer",
            Reply::Bulk(_) => "bulk string",
            Reply::Nil => "nil",
            Reply::Array(_) => "array",
        }
    }

    /// Whether this is the error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}
