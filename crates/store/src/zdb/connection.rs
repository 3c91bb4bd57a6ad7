//! One connection to a 0-db server: dialling, authentication, namespace selection, RESP framing and
//! pipelining.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame;
use sha1::{Digest, Sha1};

use super::config::{Endpoint, ZdbConfig, DEFAULT_NAMESPACE};
use super::reply::Reply;
use crate::StoreError;

/// Bytes asked from the socket per read (at least).
const READ_CHUNK: usize = 256 * 1024;

/// Longest array header line accepted (`*<count>\r\n`).
const MAX_HEADER_LINE: usize = 24;

/// How a reply expected to be an array begins; see [`Connection::read_array_start`].
#[derive(Debug)]
pub enum ArrayStart {
    /// An array of this many elements follows.
    Len(usize),
    /// The nil array.
    Nil,
    /// Not an array: the complete reply (usually an error).
    Other(Reply),
}

/// Largest bulk string accepted from a server (0-db's own limit is 8 MiB).
const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// Bulk strings at least this large are read straight into their own buffer.
const DIRECT_READ_MIN: usize = 64 * 1024;

/// Request bytes buffered before they are written out while pipelining.
const WRITE_FLUSH_AT: usize = 4 * 1024 * 1024;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// An open, authenticated connection with its namespace selected. Not shared between threads; the
/// [`ZdbClient`](super::ZdbClient) pools them.
pub struct Connection {
    stream: Stream,
    endpoint: String,
    io_timeout: Duration,
    /// Received bytes; `read_buf[read_start..read_end]` is not yet decoded, the rest is scratch space.
    read_buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
    write_buf: Vec<u8>,
}

/// `sha1("challenge:password")` in lower-case hex, the answer 0-db expects after `AUTH SECURE CHALLENGE`.
pub fn secure_hash(challenge: &str, password: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(challenge.as_bytes());
    hasher.update(b":");
    hasher.update(password.as_bytes());
    hex::encode(hasher.finalize())
}

impl Connection {
    /// Dials the configured endpoint, authenticates as admin if an admin password is set, and selects the
    /// configured namespace (with its password, in clear or as a SECURE hash).
    pub fn open(config: &ZdbConfig) -> Result<Self, StoreError> {
        let mut conn = Self::dial(&config.endpoint, config.connect_timeout, config.io_timeout)?;
        conn.handshake(config)?;
        Ok(conn)
    }

    /// Dials `endpoint` without sending anything.
    pub fn dial(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let name = endpoint.to_string();
        let stream = match endpoint {
            Endpoint::Tcp { host, port } => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|source| StoreError::Connection {
                        endpoint: name.clone(),
                        source,
                    })?
                    .collect();
                let stream = connect_any(&addrs, connect_timeout, &name)?;
                stream
                    .set_nodelay(true)
                    .and_then(|_| stream.set_read_timeout(Some(io_timeout)))
                    .and_then(|_| stream.set_write_timeout(Some(io_timeout)))
                    .map_err(|source| StoreError::Connection {
                        endpoint: name.clone(),
                        source,
                    })?;
                Stream::Tcp(stream)
            }
            Endpoint::Unix(path) => {
                let stream =
                    UnixStream::connect(path).map_err(|source| StoreError::Connection {
                        endpoint: name.clone(),
                        source,
                    })?;
                stream
                    .set_read_timeout(Some(io_timeout))
                    .and_then(|_| stream.set_write_timeout(Some(io_timeout)))
                    .map_err(|source| StoreError::Connection {
                        endpoint: name.clone(),
                        source,
                    })?;
                Stream::Unix(stream)
            }
        };
        Ok(Connection {
            stream,
            endpoint: name,
            io_timeout,
            read_buf: Vec::new(),
            read_start: 0,
            read_end: 0,
            write_buf: Vec::new(),
        })
    }

    /// The server address this connection talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn handshake(&mut self, config: &ZdbConfig) -> Result<(), StoreError> {
        if let Some(admin) = &config.admin_password {
            let reply = if config.secure_auth {
                let challenge = self.challenge()?;
                let hash = secure_hash(&challenge, admin);
                self.command(&[b"AUTH".as_slice(), b"SECURE", hash.as_bytes()])?
            } else {
                self.command(&[b"AUTH".as_slice(), admin.as_bytes()])?
            };
            self.expect_ok("AUTH", reply)?;
        }
        let ns = config.namespace.as_bytes();
        let reply = match &config.password {
            None if config.namespace == DEFAULT_NAMESPACE => return Ok(()),
            None => self.command(&[b"SELECT".as_slice(), ns])?,
            Some(password) if config.secure_auth => {
                let challenge = self.challenge()?;
                let hash = secure_hash(&challenge, password);
                self.command(&[b"SELECT".as_slice(), ns, b"SECURE", hash.as_bytes()])?
            }
            Some(password) => self.command(&[b"SELECT".as_slice(), ns, password.as_bytes()])?,
        };
        self.expect_ok("SELECT", reply)
    }

    fn challenge(&mut self) -> Result<String, StoreError> {
        match self.command(&[b"AUTH".as_slice(), b"SECURE", b"CHALLENGE"])? {
            Reply::Status(nonce) if !nonce.is_empty() => Ok(nonce),
            Reply::Bulk(nonce) if !nonce.is_empty() => {
                Ok(String::from_utf8_lossy(&nonce).into_owned())
            }
            Reply::Error(message) => Err(StoreError::Server { message }),
            other => Err(self.unexpected("AUTH SECURE CHALLENGE", &other)),
        }
    }

    /// Turns a status reply into `Ok`, an error reply into [`StoreError::Server`].
    pub fn expect_ok(&self, command: &str, reply: Reply) -> Result<(), StoreError> {
        match reply {
            Reply::Status(_) => Ok(()),
            Reply::Error(message) => Err(StoreError::Server { message }),
            other => Err(self.unexpected(command, &other)),
        }
    }

    /// A protocol error saying `command` got an unexpected `reply`.
    pub fn unexpected(&self, command: &str, reply: &Reply) -> StoreError {
        StoreError::Protocol {
            endpoint: self.endpoint.clone(),
            reason: format!("unexpected {} reply to {command}", reply.kind()),
        }
    }

    fn io_error(&self, operation: &'static str, source: io::Error) -> StoreError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => StoreError::Timeout {
                endpoint: self.endpoint.clone(),
                operation,
                timeout_ms: self.io_timeout.as_millis(),
            },
            _ => StoreError::Connection {
                endpoint: self.endpoint.clone(),
                source,
            },
        }
    }

    /// Appends one command (its arguments, binary-safe) to the send buffer without sending it.
    pub fn queue<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), StoreError> {
        let parts: Vec<BorrowedFrame<'_>> = args
            .iter()
            .map(|a| BorrowedFrame::BulkString(a.as_ref()))
            .collect();
        let frame = BorrowedFrame::Array(&parts);
        let start = self.write_buf.len();
        self.write_buf.resize(start + frame.encode_len(false), 0);
        let tail = self.write_buf.get_mut(start..).unwrap_or_default();
        if let Err(e) = encode_borrowed(tail, &frame, false) {
            self.write_buf.truncate(start);
            return Err(StoreError::Protocol {
                endpoint: self.endpoint.clone(),
                reason: format!("cannot encode command: {e}"),
            });
        }
        Ok(())
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.write_buf);
        self.write_buf.clear();
        result.map_err(|e| self.io_error("accept the request", e))
    }

    /// Reads the next reply (blocking up to the I/O timeout per read).
    pub fn read_reply(&mut self) -> Result<Reply, StoreError> {
        loop {
            let pending_len = self.read_end - self.read_start;
            let bulk_len = self.pending_bulk_len()?;
            if let Some((header_len, value_len)) = bulk_len {
                if value_len >= DIRECT_READ_MIN && header_len + value_len + 2 > pending_len {
                    let mut value = Vec::new();
                    self.read_bulk_direct(header_len, value_len, &mut value)?;
                    return Ok(Reply::Bulk(value));
                }
            }
            // Skip decoding while a bulk string is known to be incomplete.
            if pending_len > 0
                && bulk_len.is_none_or(|(header, value)| header + value + 2 <= pending_len)
            {
                let pending = self
                    .read_buf
                    .get(self.read_start..self.read_end)
                    .unwrap_or_default();
                match decode(pending) {
                    Ok(Some((frame, used))) => {
                        self.read_start += used;
                        if self.read_start == self.read_end {
                            self.read_start = 0;
                            self.read_end = 0;
                        }
                        return Ok(Reply::from(frame));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(StoreError::Protocol {
                            endpoint: self.endpoint.clone(),
                            reason: format!("malformed reply: {e}"),
                        })
                    }
                }
            }
            self.fill()?;
        }
    }

    /// When the pending bytes start with a complete bulk string header (`$<len>\r\n`): the header's
    /// length and the value's length. Lets large values be read straight into their own buffer.
    /// Bulk strings claiming more than [`MAX_BULK_LEN`] bytes are a protocol error.
    fn pending_bulk_len(&self) -> Result<Option<(usize, usize)>, StoreError> {
        let pending = self
            .read_buf
            .get(self.read_start..self.read_end)
            .unwrap_or_default();
        if pending.first() != Some(&b'$') {
            return Ok(None);
        }
        let header = pending
            .get(..pending.len().min(MAX_HEADER_LINE))
            .unwrap_or_default();
        let Some(line_end) = header.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let digits = header.get(1..line_end).unwrap_or_default();
        if digits == b"-1" {
            return Ok(None); // nil: left to the RESP decoder
        }
        match std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<usize>().ok())
        {
            Some(len) if len <= MAX_BULK_LEN => Ok(Some((line_end + 2, len))),
            _ => Err(StoreError::Protocol {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "invalid bulk string length {:?}",
                    String::from_utf8_lossy(digits)
                ),
            }),
        }
    }

    /// Reads a large bulk string whose header is pending into `value` (reusing its allocation): the bytes
    /// already received are copied once, the rest is read from the socket straight into `value`.
    fn read_bulk_direct(
        &mut self,
        header_len: usize,
        value_len: usize,
        value: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let start = self.read_start + header_len;
        let have = (self.read_end.saturating_sub(start)).min(value_len);
        // Reuse the buffer without zeroing it again: every byte is overwritten below (or an error is
        // returned and the buffer is not used).
        if value.len() < value_len {
            value.resize(value_len, 0);
        } else {
            value.truncate(value_len);
        }
        let (received, rest) = value.split_at_mut(have);
        received.copy_from_slice(self.read_buf.get(start..start + have).unwrap_or_default());
        self.read_start = start + have;
        let mut filled = 0;
        while filled < rest.len() {
            let target = rest.get_mut(filled..).unwrap_or_default();
            match self.stream.read(target) {
                Ok(0) => {
                    return Err(StoreError::Connection {
                        endpoint: self.endpoint.clone(),
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "server closed the connection",
                        ),
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error("reply", e)),
            }
        }
        while self.read_end - self.read_start < 2 {
            self.fill()?;
        }
        if self.read_buf.get(self.read_start..self.read_start + 2) != Some(b"\r\n".as_slice()) {
            return Err(StoreError::Protocol {
                endpoint: self.endpoint.clone(),
                reason: "bulk string not terminated by CRLF".to_string(),
            });
        }
        self.read_start += 2;
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
        }
        Ok(())
    }

    /// Reads a GET-shaped reply into `value`, reusing its allocation: `true` with the value in `value`,
    /// `false` for nil; an error reply becomes [`StoreError::Server`].
    pub fn read_value_into(
        &mut self,
        command: &str,
        value: &mut Vec<u8>,
    ) -> Result<bool, StoreError> {
        loop {
            if let Some((header_len, value_len)) = self.pending_bulk_len()? {
                if value_len >= DIRECT_READ_MIN {
                    self.read_bulk_direct(header_len, value_len, value)?;
                    return Ok(true);
                }
            }
            let pending = self
                .read_buf
                .get(self.read_start..self.read_end)
                .unwrap_or_default();
            let starts_bulk = pending.first() == Some(&b'$');
            let header = pending
                .get(..pending.len().min(MAX_HEADER_LINE))
                .unwrap_or_default();
            let header_complete = header.windows(2).any(|w| w == b"\r\n");
            // A bulk header still arriving: read more before deciding which path to take.
            if pending.is_empty()
                || (starts_bulk && !header_complete && pending.len() < MAX_HEADER_LINE)
            {
                self.fill()?;
                continue;
            }
            return match self.read_reply()? {
                Reply::Bulk(v) => {
                    *value = v;
                    Ok(true)
                }
                Reply::Nil => Ok(false),
                Reply::Error(message) => Err(StoreError::Server { message }),
                other => Err(self.unexpected(command, &other)),
            };
        }
    }

    /// Reads the start of a reply expected to be an array, without waiting for its elements: the element
    /// count, or the whole reply if it is not an array (e.g. an error). The caller then reads the elements
    /// with [`Connection::read_reply`]. This keeps decoding linear for arrays of large values (MGET).
    pub fn read_array_start(&mut self) -> Result<ArrayStart, StoreError> {
        loop {
            let pending = self
                .read_buf
                .get(self.read_start..self.read_end)
                .unwrap_or_default();
            match pending.first() {
                None => {}
                Some(b'*') => {
                    if let Some(line_end) = pending.windows(2).position(|w| w == b"\r\n") {
                        let count = pending
                            .get(1..line_end)
                            .and_then(|digits| std::str::from_utf8(digits).ok())
                            .and_then(|digits| digits.parse::<i64>().ok())
                            .ok_or_else(|| StoreError::Protocol {
                                endpoint: self.endpoint.clone(),
                                reason: "malformed array header".to_string(),
                            })?;
                        self.read_start += line_end + 2;
                        if self.read_start == self.read_end {
                            self.read_start = 0;
                            self.read_end = 0;
                        }
                        return Ok(match usize::try_from(count) {
                            Ok(n) => ArrayStart::Len(n),
                            Err(_) => ArrayStart::Nil,
                        });
                    }
                    if pending.len() > MAX_HEADER_LINE {
                        return Err(StoreError::Protocol {
                            endpoint: self.endpoint.clone(),
                            reason: "array header line too long".to_string(),
                        });
                    }
                }
                Some(_) => return self.read_reply().map(ArrayStart::Other),
            }
            self.fill()?;
        }
    }

    /// Reads more bytes from the socket into the receive buffer, making room for the whole pending bulk
    /// string when its size is known so that large values are neither re-decoded nor moved repeatedly.
    fn fill(&mut self) -> Result<(), StoreError> {
        let pending_len = self.read_end - self.read_start;
        let frame_rest = self.pending_bulk_len()?.map_or(0, |(header, value)| {
            (header + value + 2).saturating_sub(pending_len)
        });
        let want_spare = READ_CHUNK.max(frame_rest);
        if self.read_buf.len() - self.read_end < want_spare {
            if self.read_start > 0 {
                self.read_buf.copy_within(self.read_start..self.read_end, 0);
                self.read_end = pending_len;
                self.read_start = 0;
            }
            if self.read_buf.len() - self.read_end < want_spare {
                let grown = (self.read_buf.len() * 2).max(self.read_end + want_spare);
                self.read_buf.resize(grown, 0);
            }
        }
        let spare = self.read_buf.get_mut(self.read_end..).unwrap_or_default();
        match self.stream.read(spare) {
            Ok(0) => Err(StoreError::Connection {
                endpoint: self.endpoint.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ),
            }),
            Ok(n) => {
                self.read_end += n;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(self.io_error("reply", e)),
        }
    }

    /// Sends one command and reads its reply. Error replies are returned as [`Reply::Error`].
    pub fn command<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, StoreError> {
        self.queue(args)?;
        self.flush()?;
        self.read_reply()
    }

    /// Pipelines `count` commands, keeping up to `window()` of them in flight (asked again before each
    /// send, so it may adapt to what has been received): `encode(i, self)` queues
    /// command `i`, `read(i, self)` consumes its reply, in order. Stops at the first error; the
    /// connection is then out of step with the server and must be dropped (the pool does so).
    pub fn pipeline_with(
        &mut self,
        count: usize,
        window: &dyn Fn() -> usize,
        mut encode: impl FnMut(usize, &mut Self) -> Result<(), StoreError>,
        mut read: impl FnMut(usize, &mut Self) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut sent = 0;
        let mut received = 0;
        while received < count {
            while sent < count
                && sent - received < window().max(1)
                && self.write_buf.len() < WRITE_FLUSH_AT
            {
                encode(sent, self)?;
                sent += 1;
            }
            self.flush()?;
            read(received, self)?;
            received += 1;
        }
        Ok(())
    }

    /// Pipelines `commands` (each a list of arguments) and returns their replies in order.
    pub fn pipeline<C, A>(
        &mut self,
        commands: &[C],
        window: usize,
    ) -> Result<Vec<Reply>, StoreError>
    where
        C: AsRef<[A]>,
        A: AsRef<[u8]>,
    {
        let mut replies = Vec::with_capacity(commands.len());
        self.pipeline_with(
            commands.len(),
            &|| window,
            |i, conn| match commands.get(i) {
                Some(cmd) => conn.queue(cmd.as_ref()),
                None => Ok(()),
            },
            |_, conn| {
                replies.push(conn.read_reply()?);
                Ok(())
            },
        )?;
        Ok(replies)
    }
}

fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
    name: &str,
) -> Result<TcpStream, StoreError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            StoreError::Timeout {
                endpoint: name.to_string(),
                operation: "connect",
                timeout_ms: timeout.as_millis(),
            }
        }
        Some(source) => StoreError::Connection {
            endpoint: name.to_string(),
            source,
        },
        None => StoreError::Connection {
            endpoint: name.to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zdb::ZdbClient;
    use redis_protocol::resp2::types::OwnedFrame;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    #[test]
    fn secure_hash_is_sha1_of_challenge_colon_password() {
        // Computed independently: printf 'abc:pw' | sha1sum
        assert_eq!(
            secure_hash("abc", "pw"),
            "2137f79c88412ed50aafcc4e5d9e48cb1a212a5b"
        );
    }

    /// One scripted exchange: the command the client must send and the raw reply bytes.
    type Step = (Vec<&'static [u8]>, &'static [u8]);

    /// A scripted server on a real socket: for each step, reads one command, checks it equals the
    /// expected arguments, and answers with the given raw bytes, written `chunk` bytes at a time.
    fn scripted_server(steps: Vec<Step>, chunk: usize) -> (u16, JoinHandle<()>) {
        scripted_connections(vec![steps], chunk)
    }

    /// Like [`scripted_server`] for several connections in turn: after the steps of one connection the
    /// server closes it cleanly (shutdown, then drains what the client still sends) and accepts the next.
    fn scripted_connections(connections: Vec<Vec<Step>>, chunk: usize) -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            for steps in connections {
                let (mut socket, _) = listener.accept().unwrap();
                let mut received = Vec::new();
                for (expected, reply) in steps {
                    let command = loop {
                        if let Some((frame, used)) = decode(&received).unwrap() {
                            received.drain(..used);
                            break frame;
                        }
                        let mut buf = [0u8; 4096];
                        let n = socket.read(&mut buf).unwrap();
                        assert!(n > 0, "client hung up while {expected:?} was expected");
                        received.extend_from_slice(&buf[..n]);
                    };
                    let args: Vec<Vec<u8>> = match command {
                        OwnedFrame::Array(items) => items
                            .into_iter()
                            .map(|f| match f {
                                OwnedFrame::BulkString(b) => b,
                                other => panic!("argument sent as {other:?}"),
                            })
                            .collect(),
                        other => panic!("command sent as {other:?}"),
                    };
                    let expected: Vec<Vec<u8>> = expected.iter().map(|a| a.to_vec()).collect();
                    assert_eq!(args, expected);
                    for piece in reply.chunks(chunk.max(1)) {
                        socket.write_all(piece).unwrap();
                        socket.flush().unwrap();
                    }
                }
                let _ = socket.shutdown(std::net::Shutdown::Write);
                // Drain until the client hangs up, or for a moment if it keeps the connection pooled.
                let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
                let mut sink = [0u8; 4096];
                while matches!(socket.read(&mut sink), Ok(n) if n > 0) {}
            }
        });
        (port, handle)
    }

    fn config(port: u16) -> ZdbConfig {
        let mut c = ZdbConfig::tcp("127.0.0.1", port, "ns1");
        c.retries = 0;
        c.io_timeout = Duration::from_secs(10);
        c
    }

    #[test]
    fn replies_split_into_single_bytes_are_reassembled() {
        let (port, server) = scripted_server(
            vec![
                (vec![b"SELECT", b"ns1"], b"+OK\r\n"),
                (vec![b"GET", b"k"], b"$5\r\nhe\r\no\r\n"),
                (
                    vec![b"MGET", b"a", b"b", b"c"],
                    b"*3\r\n$1\r\nx\r\n$-1\r\n$0\r\n\r\n",
                ),
                (vec![b"EXISTS", b"k"], b":1\r\n"),
            ],
            1,
        );
        let client = ZdbClient::connect_without_ping(config(port)).unwrap();
        assert_eq!(client.get(b"k").unwrap(), Some(b"he\r\no".to_vec()));
        assert_eq!(
            client.mget(&[b"a", b"b", b"c"]).unwrap(),
            vec![Some(b"x".to_vec()), None, Some(Vec::new())]
        );
        assert!(client.exists(b"k").unwrap());
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn an_error_element_inside_mget_fails_with_the_server_text() {
        let (port, server) = scripted_server(
            vec![
                (vec![b"SELECT", b"ns1"], b"+OK\r\n"),
                (
                    vec![b"MGET", b"a", b"b"],
                    b"*2\r\n$1\r\nx\r\n-Internal Error\r\n",
                ),
            ],
            7,
        );
        let client = ZdbClient::connect_without_ping(config(port)).unwrap();
        let err = client.mget(&[b"a", b"b"]).unwrap_err();
        assert_eq!(err.server_message(), Some("Internal Error"));
        assert!(!err.is_transient());
        server.join().unwrap();
    }

    #[test]
    fn secure_select_answers_the_challenge() {
        let (port, server) = scripted_server(
            vec![
                (vec![b"AUTH", b"SECURE", b"CHALLENGE"], b"+abc\r\n"),
                (
                    vec![
                        b"SELECT",
                        b"ns1",
                        b"SECURE",
                        b"2137f79c88412ed50aafcc4e5d9e48cb1a212a5b",
                    ],
                    b"+OK\r\n",
                ),
                (vec![b"SET", b"k", b"v"], b"$1\r\nk\r\n"),
            ],
            4096,
        );
        let mut c = config(port);
        c.password = Some("pw".into());
        c.secure_auth = true;
        let client = ZdbClient::connect_without_ping(c).unwrap();
        client.set(b"k", b"v").unwrap();
        server.join().unwrap();
    }

    #[test]
    fn get_each_streams_small_nil_and_large_values_in_order() {
        let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut reply = format!("${}\r\n", large.len()).into_bytes();
        reply.extend_from_slice(&large);
        reply.extend_from_slice(b"\r\n");
        let large_reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
        let (port, server) = scripted_server(
            vec![
                (vec![b"SELECT", b"ns1"], b"+OK\r\n"),
                (vec![b"GET", b"a"], b"$3\r\nabc\r\n"),
                (vec![b"GET", b"b"], b"$-1\r\n"),
                (vec![b"GET", b"c"], large_reply),
                (vec![b"GET", b"d"], b"$-1\r\n"),
                (
                    vec![b"GET", b"e"],
                    b"-Namespace is temporarily frozen (read-write disabled)\r\n",
                ),
            ],
            1000,
        );
        let client = ZdbClient::connect_without_ping(config(port)).unwrap();
        let mut seen = Vec::new();
        let err = client
            .get_each(&[b"a", b"b", b"c", b"d", b"e"], |i, value| {
                seen.push((i, value.map(|v| v.to_vec())));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(
            err.server_message(),
            Some("Namespace is temporarily frozen (read-write disabled)")
        );
        assert_eq!(
            seen,
            vec![
                (0, Some(b"abc".to_vec())),
                (1, None),
                (2, Some(large)),
                (3, None)
            ]
        );
        server.join().unwrap();
    }

    #[test]
    fn get_each_resumes_after_the_connection_drops_without_repeating_values() {
        let (port, server) = scripted_connections(
            vec![
                vec![
                    (vec![b"SELECT", b"ns1"], b"+OK\r\n"),
                    (vec![b"GET", b"a"], b"$1\r\nA\r\n"),
                ],
                vec![
                    (vec![b"SELECT", b"ns1"], b"+OK\r\n"),
                    (vec![b"GET", b"b"], b"$1\r\nB\r\n"),
                    (vec![b"GET", b"c"], b"$-1\r\n"),
                ],
            ],
            4096,
        );
        let mut c = config(port);
        c.retries = 1;
        c.retry_backoff = Duration::from_millis(1);
        let client = ZdbClient::new(c);
        let mut seen = Vec::new();
        client
            .get_each(&[b"a", b"b", b"c"], |i, value| {
                seen.push((i, value.map(|v| v.to_vec())));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![
                (0, Some(b"A".to_vec())),
                (1, Some(b"B".to_vec())),
                (2, None)
            ]
        );
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn a_malformed_reply_is_a_protocol_error() {
        let (port, server) = scripted_server(
            vec![
                (vec![b"SELECT", b"ns1"], b"+OK\r\n"),
                (vec![b"GET", b"k"], b"?garbage\r\n"),
            ],
            4096,
        );
        let client = ZdbClient::connect_without_ping(config(port)).unwrap();
        let err = client.get(b"k").unwrap_err();
        assert!(matches!(err, StoreError::Protocol { .. }), "{err:?}");
        assert!(!err.is_transient());
        server.join().unwrap();

        // An absurd bulk length is refused instead of being allocated.
        for (reply, each) in [
            (b"$99999999999999999999\r\n".as_slice(), false),
            (b"$4294967296000\r\n".as_slice(), true),
        ] {
            let (port, server) = scripted_server(
                vec![
                    (vec![b"SELECT", b"ns1"], b"+OK\r\n"),
                    (vec![b"GET", b"k"], reply),
                ],
                4096,
            );
            let client = ZdbClient::connect_without_ping(config(port)).unwrap();
            let err = if each {
                client.get_each(&[b"k"], |_, _| Ok(())).unwrap_err()
            } else {
                client.get(b"k").unwrap_err()
            };
            assert!(matches!(err, StoreError::Protocol { .. }), "{err:?}");
            server.join().unwrap();
        }
    }
}
