//! RESP2 as 0-db speaks it: requests are arrays of bulk strings; replies are written straight into the
//! connection's output buffer.
//!
//! The request decoder is our own rather than `redis-protocol`'s: a server must bound what it buffers
//! before the bytes arrive (0-db drops a client sending a payload over 8 MiB), must not recurse on nested
//! arrays sent by a hostile client, and should not allocate per argument. `redis-protocol` is used in the
//! tests and the fuzz target as the reference decoder for the same byte streams.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// Largest argument accepted (0-db's payload limit).
pub const MAX_ARGUMENT_LEN: usize = 8 * 1024 * 1024;
/// Most arguments in one request (MGET itself allows 1023 keys).
pub const MAX_ARGUMENTS: usize = 4096;
/// Longest `*N` / `$N` header line accepted, without CRLF.
const MAX_HEADER_LINE: usize = 20;

/// Why a byte stream is not a valid request. The connection answers with [`ProtocolError::reply`] and is
/// closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The request does not start with `*`.
    #[error("Protocol error: expected '*'")]
    NotAnArray,
    /// An array element does not start with `$`.
    #[error("Protocol error: expected '$'")]
    NotABulkString,
    /// A length is not a number, negative where not allowed, or its line is too long.
    #[error("Protocol error: invalid length")]
    BadLength,
    /// More than [`MAX_ARGUMENTS`] arguments, or none.
    #[error("Protocol error: invalid arguments count")]
    BadArgumentCount,
    /// An argument is larger than [`MAX_ARGUMENT_LEN`].
    #[error("Payload too large")]
    TooLarge,
    /// A bulk string is not followed by CRLF.
    #[error("Protocol error: expected CRLF")]
    MissingCrlf,
}

impl ProtocolError {
    /// The error line sent before closing the connection.
    pub fn reply(&self) -> String {
        self.to_string()
    }
}

/// Reads a `<prefix><digits>\r\n` line at `pos`. `Ok(None)`: need more bytes.
fn header_line(buf: &[u8], pos: usize, prefix: u8) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(&first) = buf.get(pos) else {
        return Ok(None);
    };
    if first != prefix {
        return Err(if prefix == b'*' {
            ProtocolError::NotAnArray
        } else {
            ProtocolError::NotABulkString
        });
    }
    let start = pos + 1;
    let window = &buf[start..buf.len().min(start + MAX_HEADER_LINE + 2)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() >= MAX_HEADER_LINE + 2 {
            return Err(ProtocolError::BadLength);
        }
        return Ok(None);
    };
    match window.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProtocolError::BadLength),
    }
    let digits = &window[..cr];
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::BadLength);
    }
    let mut n: i64 = 0;
    for d in digits {
        n = n * 10 + (d - b'0') as i64;
    }
    Ok(Some((if neg { -n } else { n }, start + cr + 2)))
}

/// Decodes one request from the start of `buf`, storing each argument's byte range in `args`.
///
/// Returns `Ok(Some(consumed))` for a complete request, `Ok(None)` when more bytes are needed, or an
/// error for bytes that can never become a valid request.
pub fn parse_request(
    buf: &[u8],
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ProtocolError> {
    args.clear();
    let Some((count, mut pos)) = header_line(buf, 0, b'*')? else {
        return Ok(None);
    };
    if count < 1 || count as usize > MAX_ARGUMENTS {
        return Err(ProtocolError::BadArgumentCount);
    }
    for _ in 0..count {
        let Some((len, next)) = header_line(buf, pos, b'$')? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(ProtocolError::BadLength);
        }
        let len = len as usize;
        if len > MAX_ARGUMENT_LEN {
            return Err(ProtocolError::TooLarge);
        }
        let end = next + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        args.push(next..end);
        pos = end + 2;
    }
    Ok(Some(pos))
}

/// Appends `+<s>\r\n`.
pub fn simple(out: &mut BytesMut, s: &str) {
    out.reserve(s.len() + 3);
    out.put_u8(b'+');
    out.put_slice(s.as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends `+OK\r\n`.
pub fn ok(out: &mut BytesMut) {
    out.put_slice(b"+OK\r\n");
}

/// Appends `-<msg>\r\n`.
pub fn error(out: &mut BytesMut, msg: &str) {
    out.reserve(msg.len() + 3);
    out.put_u8(b'-');
    out.put_slice(msg.as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends the null bulk string `$-1\r\n`.
pub fn nil(out: &mut BytesMut) {
    out.put_slice(b"$-1\r\n");
}

/// Appends `:<n>\r\n`.
pub fn integer(out: &mut BytesMut, n: i64) {
    out.put_u8(b':');
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends the header `$<len>\r\n` of a bulk string whose bytes follow.
pub fn bulk_header(out: &mut BytesMut, len: usize) {
    out.put_u8(b'$');
    out.put_slice(itoa::Buffer::new().format(len).as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends a bulk string.
pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 16);
    bulk_header(out, data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends an array header `*<n>\r\n`.
pub fn array(out: &mut BytesMut, n: usize) {
    out.put_u8(b'*');
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = Option<(usize, Vec<Vec<u8>>)>;

    fn parse(buf: &[u8]) -> Result<Parsed, ProtocolError> {
        let mut r = Vec::new();
        Ok(parse_request(buf, &mut r)?
            .map(|n| (n, r.iter().map(|x| buf[x.clone()].to_vec()).collect())))
    }

    #[test]
    fn parses_complete_and_partial_requests() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        let (n, args) = parse(req).unwrap().unwrap();
        assert_eq!(n, req.len());
        assert_eq!(args, vec![b"SET".to_vec(), b"k".to_vec(), b"".to_vec()]);
        for cut in 0..req.len() {
            assert_eq!(parse(&req[..cut]).unwrap(), None, "prefix {cut}");
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(b"PING\r\n"), Err(ProtocolError::NotAnArray));
        assert_eq!(parse(b"*1\r\n:1\r\n"), Err(ProtocolError::NotABulkString));
        assert_eq!(parse(b"*0\r\n"), Err(ProtocolError::BadArgumentCount));
        assert_eq!(parse(b"*-1\r\n"), Err(ProtocolError::BadArgumentCount));
        assert_eq!(parse(b"*1\r\n$-1\r\n"), Err(ProtocolError::BadLength));
        assert_eq!(parse(b"*1\r\n$x\r\n"), Err(ProtocolError::BadLength));
        assert_eq!(
            parse(b"*1\r\n$99999999999\r\n"),
            Err(ProtocolError::TooLarge)
        );
        assert_eq!(parse(b"*1\r\n$1\r\nabc"), Err(ProtocolError::MissingCrlf));
        assert_eq!(
            parse(b"*11111111111111111111111"),
            Err(ProtocolError::BadLength)
        );
        assert_eq!(parse(b"*1\r\n*1\r\n"), Err(ProtocolError::NotABulkString));
    }
}
