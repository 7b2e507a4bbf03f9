//! The lean HTTP/1.1 connection: what serves every plain-HTTP connection (TLS
//! connections keep hyper, see `conn`). It exists for parked clients: a worker's
//! long-poll lease, a producer's task or group wait, an idle keep-alive
//! connection. Under hyper each held an 8 KiB read buffer, a write buffer, a
//! dispatcher and timers, about 14.5 KB idle and 29 KB parked (BENCHMARKS.md,
//! issue 12). Here a connection between requests holds its socket, an empty
//! `Vec` and a few words of state: a read goes into this thread's scratch buffer
//! and only bytes that are not yet a whole request (a head cut by the network, a
//! pipelined request read early) are copied to the connection's own buffer, sized
//! to them. A request in flight holds its parsed head and body until the router
//! takes them, then only the router's future.
//!
//! What it keeps of HTTP/1.1 (RFC 9112): keep-alive (HTTP/1.0 with `Connection:
//! keep-alive`), pipelining (requests answered in order, one at a time), chunked
//! request bodies (trailers read and dropped), `Expect: 100-continue` (the interim
//! answer goes out when the body is awaited and not already here), `HEAD`. What
//! it refuses, each answered (problem+json) and closed: a head that does not parse
//! (400), one over `request_head_bytes_max` or with more than
//! [`REQUEST_HEADERS_MAX`] fields (431), both `Content-Length` and
//! `Transfer-Encoding`, or `Content-Length`s that disagree (400, the
//! request-smuggling cases), a transfer coding other than `chunked` (501), a body
//! over `request_bytes_max` (413), a body that stalls past `body_read_timeout_ms`
//! (408), an expectation other than `100-continue` (417).
//!
//! Bodies are read whole before the router runs (they are at most
//! `request_bytes_max`, and every handler reads its body whole anyway), so the
//! timeouts of a connection are all here, in one loop: the header timeout from
//! the accept (or from a request's first byte), the idle timeout between
//! requests, the body timeout from the end of the head, and a write that makes no
//! progress for the idle timeout. While a request is in flight the connection
//! still watches its socket: a client that goes away drops the request's future
//! (a parked lease then leases nothing to nobody), and pipelined bytes are kept,
//! up to `request_head_bytes_max`.
//!
//! A `101 Switching Protocols` answer that carries a takeover (the worker
//! channel, `channel`) ends the HTTP part: after writing it, the connection's
//! socket, any bytes read past the request and the connection's slot go to the
//! takeover, which starts the channel's own task; this one ends.
//!
//! May not: hold a buffer between requests, spawn per request, or answer out of
//! order.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version,
};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::ConnLimits;
use crate::error::ApiError;
use crate::park::{Park, ParkHere, Parked};

/// Most header fields a request may carry (hyper's default too).
pub const REQUEST_HEADERS_MAX: usize = 100;
/// Bytes one read takes from a socket into its thread's scratch buffer.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Most bytes reserved for a body before they arrive (it then grows as they do).
pub const BODY_PREALLOCATED_BYTES_MAX: usize = 64 * 1024;
/// Longest chunk-size line of a chunked body (the size in hex and extensions).
const CHUNK_LINE_BYTES_MAX: usize = 1024;

thread_local! {
    /// Where every read of this thread lands first; bytes that must outlive the
    /// read are copied out before the next await.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
    /// The `Date` header's value, made again once a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// What every connection of one server shares.
pub(crate) struct Shared {
    pub router: Router,
    pub limits: ConnLimits,
    /// Largest request body (`Limits::request_bytes_max`).
    pub body_bytes_max: usize,
    /// Set each request's `ConnectInfo` (for the ingress limit).
    pub tag_peer: bool,
}

/// Why a connection ended other than by a clean close (logged at debug).
#[derive(Debug)]
pub(crate) enum Ended {
    Io(io::Error),
    Timeout(&'static str),
    /// Answered with an error status and closed.
    Refused(StatusCode),
    /// The client closed its end in the middle of a request.
    Eof,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Io(e) => write!(f, "{e}"),
            Ended::Timeout(why) => f.write_str(why),
            Ended::Refused(status) => write!(f, "refused with {status}"),
            Ended::Eof => f.write_str("the client closed the connection mid-request"),
        }
    }
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Ended {
        Ended::Io(e)
    }
}

/// Why a request goes no further: an answer the layer gives itself before
/// closing, or a connection that is gone or timed out (nothing to answer).
enum Refusal {
    Answer(ApiError),
    Close(Ended),
}

impl Refusal {
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: String) -> Self {
        Refusal::Answer(ApiError::new(status, slug, title, detail))
    }

    fn bad_request(detail: impl Into<String>) -> Refusal {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail.into(),
        )
    }

    fn head_too_large(limits: &ConnLimits) -> Refusal {
        Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "head-too-large",
            "Request head too large",
            format!(
                "the request line and headers exceed {} bytes or {REQUEST_HEADERS_MAX} fields",
                limits.request_head_bytes_max
            ),
        )
    }

    fn bad_body(detail: impl std::fmt::Display) -> Refusal {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid request body",
            format!("the request body could not be read: {detail}"),
        )
    }

    fn body_too_large(limit: usize) -> Refusal {
        Refusal::Answer(ApiError::too_large(format!(
            "the request body exceeds {limit} bytes"
        )))
    }

    fn body_timeout(timeout_ms: u64) -> Refusal {
        Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body timeout",
            crate::conn::BodyReadTimeout { timeout_ms }.to_string(),
        )
    }

    /// The socket failed or the client closed it.
    fn closed(e: Option<io::Error>) -> Refusal {
        Refusal::Close(e.map_or(Ended::Eof, Ended::Io))
    }

    #[cfg(test)]
    fn status(&self) -> u16 {
        match self {
            Refusal::Answer(e) => e.status.as_u16(),
            Refusal::Close(_) => 0,
        }
    }
}

/// How a request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

/// A parsed request head.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses a request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and the bytes it took.
fn parse_head(buf: &[u8], limits: &ConnLimits) -> Result<Option<(Head, usize)>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
    let mut req = httparse::Request::new(&mut fields);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.request_head_bytes_max {
                return Err(Refusal::head_too_large(limits));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::head_too_large(limits)),
        Err(e) => return Err(Refusal::bad_request(format!("malformed request head: {e}"))),
    };
    if used > limits.request_head_bytes_max {
        return Err(Refusal::head_too_large(limits));
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refusal::bad_request("malformed method"))?;
    let uri: Uri = req
        .path
        .unwrap_or_default()
        .parse()
        .map_err(|_| Refusal::bad_request("malformed request target"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut close = version == Version::HTTP_10;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Refusal::bad_request(format!("malformed header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| Refusal::bad_request(format!("malformed value of header {name}")))?;
        if name == header::CONTENT_LENGTH {
            for part in split_list(h.value) {
                let n = std::str::from_utf8(part)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| Refusal::bad_request("malformed Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Refusal::bad_request("Content-Length values disagree"));
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            for coding in split_list(h.value) {
                if chunked {
                    // `chunked` must be the last coding.
                    other_coding = true;
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    other_coding = true;
                }
            }
        } else if name == header::CONNECTION {
            for token in split_list(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        } else if name == header::EXPECT {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(Refusal::new(
                    StatusCode::EXPECTATION_FAILED,
                    "expectation-failed",
                    "Expectation failed",
                    "the only expectation served is 100-continue".into(),
                ));
            }
        }
        headers.append(name, value);
    }
    let framing = match (chunked || other_coding, length) {
        (true, Some(_)) => {
            return Err(Refusal::bad_request(
                "a request may not carry both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if other_coding || version == Version::HTTP_10 => {
            return Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported-transfer-coding",
                "Transfer coding not supported",
                "the only transfer coding served is chunked (and only on HTTP/1.1)".into(),
            ))
        }
        (true, None) => Framing::Chunked,
        (false, n) => Framing::Length(n.unwrap_or(0)),
    };
    Ok(Some((
        Head {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive: !close,
            expect_continue,
        },
        used,
    )))
}

/// The elements of a comma-separated header value, trimmed, empty ones skipped.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|p| p.trim_ascii())
        .filter(|p| !p.is_empty())
}

/// The decoder of a chunked body, fed the raw bytes as they come.
#[derive(Debug)]
enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines, up to an empty one.
    Trailers {
        bytes: usize,
    },
    Done,
}

impl Chunked {
    /// Decodes what it can of `input` into `out` and returns how many bytes of
    /// `input` it took; the rest must be offered again with more after it.
    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        trailers_max: usize,
    ) -> Result<usize, Refusal> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self {
                Chunked::Done => return Ok(at),
                Chunked::Size => {
                    let Some(end) = find_crlf(rest) else {
                        if rest.len() > CHUNK_LINE_BYTES_MAX {
                            return Err(Refusal::bad_body("a chunk-size line is too long"));
                        }
                        return Ok(at);
                    };
                    let (used, size) = match httparse::parse_chunk_size(&rest[..end + 2]) {
                        Ok(httparse::Status::Complete(v)) => v,
                        _ => return Err(Refusal::bad_body("invalid chunk size line")),
                    };
                    at += used;
                    if size == 0 {
                        *self = Chunked::Trailers { bytes: 0 };
                    } else {
                        if size > (limit - out.len()) as u64 {
                            return Err(Refusal::body_too_large(limit));
                        }
                        *self = Chunked::Data(size);
                    }
                }
                Chunked::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    at += take;
                    *left -= take as u64;
                    if *left == 0 {
                        *self = Chunked::DataEnd;
                    }
                }
                Chunked::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(Refusal::bad_body("a chunk's data does not end with CRLF"));
                    }
                    at += 2;
                    *self = Chunked::Size;
                }
                Chunked::Trailers { bytes } => {
                    let Some(end) = find_crlf(rest) else {
                        if *bytes + rest.len() > trailers_max {
                            return Err(Refusal::bad_body("the trailer section is too long"));
                        }
                        return Ok(at);
                    };
                    at += end + 2;
                    *bytes += end + 2;
                    if end == 0 {
                        *self = Chunked::Done;
                    } else if *bytes > trailers_max {
                        return Err(Refusal::bad_body("the trailer section is too long"));
                    }
                }
            }
        }
    }
}

/// Resolves when `stream` may have bytes to read. `TcpStream::readable` does the
/// same with a future of 150 bytes (a waiter of its own); this one is a pointer,
/// and what a connection's future holds while it waits is what a parked
/// connection costs. Only the connection's own task waits on its socket, so
/// the one waker slot `poll_read_ready` keeps is enough.
fn readable(stream: &TcpStream) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| stream.poll_read_ready(cx))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// One connection: its socket and the bytes read but not yet used.
pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes of the next request(s), read ahead; empty (unallocated) between
    /// requests unless the client pipelines.
    pending: Vec<u8>,
}

/// What one read from the socket gave.
enum Read {
    /// The client closed its side.
    Eof,
    /// Nothing after all (a spurious readiness).
    Nothing,
    Bytes,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            pending: Vec::new(),
        }
    }

    /// Reads what the socket has, at most `room` bytes, into the scratch buffer
    /// and hands them to `take` (before any await).
    fn read_with<T>(
        &mut self,
        room: usize,
        take: impl FnOnce(&mut Vec<u8>, &[u8]) -> T,
    ) -> io::Result<(Read, Option<T>)> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let room = room.clamp(1, scratch.len());
            match self.stream.try_read(&mut scratch[..room]) {
                Ok(0) => Ok((Read::Eof, None)),
                Ok(n) => Ok((Read::Bytes, Some(take(&mut self.pending, &scratch[..n])))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((Read::Nothing, None)),
                Err(e) => Err(e),
            }
        })
    }

    /// Waits for the next request head: from the bytes already read, else from the
    /// socket. `Ok(None)`: the connection closes without an answer (EOF between
    /// requests, the server stopping).
    async fn next_head(
        &mut self,
        limits: &ConnLimits,
        first_due: Option<Instant>,
        stopping: &CancellationToken,
    ) -> Result<Option<Box<Head>>, Box<Refusal>> {
        let header = Duration::from_millis(limits.header_read_timeout_ms);
        // A request that has begun (or the first, from the accept) has the header
        // timeout; a connection with nothing of its next request, the idle one.
        let mut due = match first_due {
            Some(due) => due,
            None if !self.pending.is_empty() => Instant::now() + header,
            None => Instant::now() + Duration::from_millis(limits.idle_timeout_ms),
        };
        let mut idle = first_due.is_none() && self.pending.is_empty();
        loop {
            if !self.pending.is_empty() {
                if let Some((head, used)) = parse_head(&self.pending, limits)? {
                    self.pending.drain(..used);
                    if self.pending.is_empty() {
                        // Give the memory back: a parked connection holds none.
                        self.pending = Vec::new();
                    }
                    return Ok(Some(Box::new(head)));
                }
            }
            if stopping.is_cancelled() {
                return Ok(None);
            }
            tokio::select! {
                biased;
                ready = readable(&self.stream) => ready.map_err(|e| Refusal::closed(Some(e)))?,
                () = tokio::time::sleep_until(due) => {
                    return Err(Box::new(Refusal::Close(Ended::Timeout(if idle {
                        "no request within idle_timeout_ms"
                    } else {
                        "no complete request head within header_read_timeout_ms"
                    }))))
                }
                () = stopping.cancelled() => return Ok(None),
            }
            let head_max = limits.request_head_bytes_max;
            let (read, head) = self
                .read_with(head_max + 1, |pending, fresh| {
                    if pending.is_empty() {
                        // The usual case: the whole request in one read, parsed
                        // where it landed; only what follows it is kept.
                        match parse_head(fresh, limits) {
                            Ok(Some((head, used))) => {
                                pending.extend_from_slice(&fresh[used..]);
                                Ok(Some(head))
                            }
                            Ok(None) => {
                                pending.extend_from_slice(fresh);
                                Ok(None)
                            }
                            Err(e) => Err(e),
                        }
                    } else {
                        pending.extend_from_slice(fresh);
                        Ok(None)
                    }
                })
                .map_err(|e| Refusal::closed(Some(e)))?;
            match read {
                Read::Eof => return Ok(None),
                Read::Nothing => continue,
                Read::Bytes => {}
            }
            if let Some(Some(head)) = head.transpose()? {
                return Ok(Some(Box::new(head)));
            }
            if idle {
                idle = false;
                due = Instant::now() + header;
            }
        }
    }

    /// Reads a request's body (the bytes already read first), before `due`.
    async fn body(
        &mut self,
        head: &Head,
        limit: usize,
        trailers_max: usize,
        timeout_ms: u64,
    ) -> Result<Bytes, Refusal> {
        let due = Instant::now() + Duration::from_millis(timeout_ms);
        let mut body = Vec::new();
        let mut raw = std::mem::take(&mut self.pending);
        let mut chunked = Chunked::Size;
        let mut continued = !head.expect_continue;
        loop {
            // Use what has been read.
            let done = match head.framing {
                Framing::Length(n) => {
                    if n > limit {
                        return Err(Refusal::body_too_large(limit));
                    }
                    if body.capacity() == 0 {
                        // What is declared, up to a bound: a client declaring
                        // 64 MiB and sending nothing gets no 64 MiB of ours.
                        body.reserve_exact(n.min(BODY_PREALLOCATED_BYTES_MAX));
                    }
                    let take = raw.len().min(n - body.len());
                    body.extend_from_slice(&raw[..take]);
                    raw.drain(..take);
                    body.len() == n
                }
                Framing::Chunked => {
                    let used = chunked.decode(&raw, &mut body, limit, trailers_max)?;
                    raw.drain(..used);
                    matches!(chunked, Chunked::Done)
                }
            };
            if done {
                // What follows is the next request's.
                self.pending = raw;
                if self.pending.is_empty() {
                    self.pending = Vec::new();
                }
                return Ok(Bytes::from(body));
            }
            if !continued {
                continued = true;
                self.stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .map_err(|e| Refusal::closed(Some(e)))?;
            }
            tokio::select! {
                ready = readable(&self.stream) => ready.map_err(|e| Refusal::closed(Some(e)))?,
                () = tokio::time::sleep_until(due) => return Err(Refusal::body_timeout(timeout_ms)),
            }
            let want = match head.framing {
                Framing::Length(n) => n - body.len(),
                Framing::Chunked => SCRATCH_BYTES,
            };
            std::mem::swap(&mut self.pending, &mut raw);
            let (read, _) = self
                .read_with(want, |pending, fresh| pending.extend_from_slice(fresh))
                .map_err(|e| Refusal::closed(Some(e)))?;
            std::mem::swap(&mut self.pending, &mut raw);
            if let Read::Eof = read {
                return Err(Refusal::closed(None));
            }
        }
    }

    /// Writes `bytes`, giving up if the client reads nothing for `patience`.
    async fn write(&mut self, bytes: &[u8], patience: Duration) -> Result<(), Ended> {
        match tokio::time::timeout(patience, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Ended::Io(e)),
            Err(_) => Err(Ended::Timeout(
                "the client read no answer within idle_timeout_ms",
            )),
        }
    }
}

/// Serves one plain connection until it closes, times out or (once `stopping` is
/// cancelled) has answered its request in flight.
///
/// This future is what a connection costs while it waits, so it holds only the
/// wait for a head and the wait for parked work; each request's other steps
/// (its body, the router, the answer) run in a box made for that request.
pub(crate) async fn serve(
    mut conn: Conn,
    peer: SocketAddr,
    shared: Arc<Shared>,
    head_due: Instant,
    stopping: CancellationToken,
    // Held while the connection is open: its slot under the cap, its count
    // (a worker channel takes it over).
    held: impl Send + Sync + 'static,
) {
    // The arguments are used where they are (a future keeps its arguments for
    // its whole life; moving them into locals would keep them twice).
    let ended: Result<Option<crate::channel::Takeover>, Ended> = async {
        let limits = &shared.limits;
        let mut first_due = Some(head_due);
        loop {
            let head = match conn.next_head(limits, first_due.take(), &stopping).await {
                Ok(Some(head)) => head,
                Ok(None) => return Ok(None),
                Err(refusal) => {
                    return Box::pin(refuse(&mut conn, *refusal, limits))
                        .await
                        .map(|()| None)
                }
            };
            let head_only = head.method == Method::HEAD;
            let keep_alive = head.keep_alive;
            let response = match Box::pin(exchange(&mut conn, &shared, head, peer)).await? {
                Exchange::Answer(response) => response,
                Exchange::Parked(work) => match watched(&mut conn, limits, work).await? {
                    Some(response) => response,
                    None => return Ok(None),
                },
                Exchange::Upgraded(takeover) => return Ok(Some(takeover)),
                Exchange::Gone => return Ok(None),
            };
            let close = !keep_alive || stopping.is_cancelled();
            if !Box::pin(answer(&mut conn, response, head_only, close, limits)).await? {
                return Ok(None);
            }
        }
    }
    .await;
    match ended {
        // The channel runs in a task of its own: this one, and all it held for
        // HTTP, ends here.
        Ok(Some(takeover)) => takeover(conn.stream, conn.pending, Box::new(held)),
        Ok(None) => drop(held),
        Err(error) => tracing::debug!(%error, "connection closed"),
    }
}

/// How a request's exchange went.
enum Exchange {
    Answer(Response),
    /// A long-poll waits: only its parked work is kept (`crate::park`).
    Parked(Parked),
    /// The client went away first.
    Gone,
    /// A `101 Switching Protocols`, written: the connection is now the
    /// takeover's (the worker channel).
    Upgraded(crate::channel::Takeover),
}

/// Reads a request's body, runs the router on it, and takes a long-poll's parked
/// work out of its placeholder answer.
async fn exchange(
    conn: &mut Conn,
    shared: &Shared,
    head: Box<Head>,
    peer: SocketAddr,
) -> Result<Exchange, Ended> {
    let head = *head;
    let limits = &shared.limits;
    let body = match conn
        .body(
            &head,
            shared.body_bytes_max,
            limits.request_head_bytes_max,
            limits.body_read_timeout_ms,
        )
        .await
    {
        Ok(body) => body,
        Err(refusal) => return refuse(conn, refusal, limits).await.map(|()| Exchange::Gone),
    };
    let mut req = Request::new(Body::from(body));
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    if shared.tag_peer {
        req.extensions_mut().insert(ConnectInfo(peer));
    }
    req.extensions_mut().insert(ParkHere);
    let call = Box::pin(tower::ServiceExt::oneshot(shared.router.clone(), req));
    let Some(routed) = watched(conn, limits, call).await? else {
        return Ok(Exchange::Gone);
    };
    let mut response = routed.unwrap_or_else(|never: Infallible| match never {});
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(takeover) = crate::channel::Upgrade::take(&mut response) {
            answer(conn, response, false, false, limits).await?;
            return Ok(Exchange::Upgraded(takeover));
        }
    }
    Ok(match Park::take(&mut response) {
        Some(work) => Exchange::Parked(work),
        None => Exchange::Answer(response),
    })
}

/// Writes a response; `false` if the connection closes after it.
async fn answer(
    conn: &mut Conn,
    response: Response,
    head_only: bool,
    close: bool,
    limits: &ConnLimits,
) -> Result<bool, Ended> {
    let close = close
        || response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let out = encode(response, head_only, close).await?;
    conn.write(&out, Duration::from_millis(limits.idle_timeout_ms))
        .await?;
    Ok(!close)
}

/// Awaits `work` (the router's answer, or a long-poll's parked work) while
/// watching the socket: `None` if the client closed its side first (`work` is
/// then dropped: a parked lease leases nothing). Bytes of pipelined requests
/// that arrive meanwhile are kept, up to `request_head_bytes_max`; past that
/// the socket is left unread until the answer is out.
async fn watched<F: Future + Unpin>(
    conn: &mut Conn,
    limits: &ConnLimits,
    work: F,
) -> Result<Option<F::Output>, Ended> {
    let mut work = work;
    let read_ahead_max = limits.request_head_bytes_max;
    loop {
        let watching = conn.pending.len() < read_ahead_max;
        tokio::select! {
            biased;
            done = &mut work => return Ok(Some(done)),
            ready = readable(&conn.stream), if watching => {
                ready?;
                let room = read_ahead_max - conn.pending.len();
                let (read, _) = conn.read_with(room, |pending, fresh| pending.extend_from_slice(fresh))?;
                if let Read::Eof = read {
                    return Ok(None);
                }
            }
        }
    }
}

/// Answers a refused request (unless the connection is already gone) and ends
/// the connection.
async fn refuse(conn: &mut Conn, refusal: Refusal, limits: &ConnLimits) -> Result<(), Ended> {
    let patience = Duration::from_millis(limits.idle_timeout_ms);
    let error = match refusal {
        Refusal::Answer(error) => error,
        Refusal::Close(ended) => return Err(ended),
    };
    let status = error.status;
    let out = encode(error.into_response(), false, true).await?;
    conn.write(&out, patience).await?;
    Err(Ended::Refused(status))
}

/// The response's bytes: status line, headers (with `Content-Length`, `Date` and,
/// when the connection closes after it, `Connection: close`), body.
async fn encode(response: Response, head_only: bool, close: bool) -> Result<Vec<u8>, Ended> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| Ended::Io(io::Error::other(e)))?
        .to_bytes();
    let status = parts.status;
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut has_date = false;
    let mut declared_length = None;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            declared_length = Some(value);
            continue;
        }
        if name == header::TRANSFER_ENCODING
            || (name == header::CONNECTION && status != StatusCode::SWITCHING_PROTOCOLS)
        {
            continue;
        }
        has_date |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodyless {
        out.extend_from_slice(b"content-length: ");
        match declared_length {
            // A HEAD answer says how long the GET's body would be.
            Some(v) if head_only && body.is_empty() => out.extend_from_slice(v.as_bytes()),
            _ => out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodyless {
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// Appends the current time as an HTTP date.
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits::new(crate::conn::FileBudget::for_files_max(4096))
    }

    fn head(text: &str) -> Result<Option<(Head, usize)>, Refusal> {
        parse_head(text.as_bytes(), &limits())
    }

    fn refused(text: &str) -> StatusCode {
        match head(text) {
            Err(r) => StatusCode::from_u16(r.status()).unwrap(),
            Ok(_) => panic!("{text:?} was not refused"),
        }
    }

    #[test]
    fn heads_parse_with_their_framing_and_keep_alive() {
        let (h, used) = head("POST /a?b=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(used, 43);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(h.uri.path(), "/a");
        let (h, _) = head("GET / HTTP/1.0\r\n\r\n").ok().flatten().unwrap();
        assert!(!h.keep_alive);
        let (h, _) = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert!(h.keep_alive);
        let (h, _) =
            head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nExpect: 100-Continue\r\n\r\n")
                .ok()
                .flatten()
                .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive && h.expect_continue);
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n")
            .ok()
            .unwrap()
            .is_none());
    }

    #[test]
    fn ambiguous_or_unsupported_heads_are_refused() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(refused("GARBAGE\r\n\r\n"), bad);
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            bad
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"),
            bad
        );
        assert!(head("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n").is_ok());
        let unsupported = StatusCode::NOT_IMPLEMENTED;
        assert_eq!(
            refused("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            unsupported
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            unsupported
        );
        assert_eq!(
            refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            unsupported
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nExpect: something\r\n\r\n"),
            StatusCode::EXPECTATION_FAILED
        );
        let many: String = (0..=REQUEST_HEADERS_MAX)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let long = format!(
            "GET /{} HTTP/1.1\r\n",
            "a".repeat(limits().request_head_bytes_max)
        );
        assert_eq!(refused(&long), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    /// Feeds `input` to a decoder `step` bytes at a time, as a connection would.
    fn decode_in_steps(input: &[u8], step: usize, limit: usize) -> Result<(Vec<u8>, usize), u16> {
        let mut d = Chunked::Size;
        let mut out = Vec::new();
        let mut raw = Vec::new();
        let mut fed = 0;
        while !matches!(d, Chunked::Done) {
            if fed == input.len() {
                return Err(0);
            }
            let next = (fed + step).min(input.len());
            raw.extend_from_slice(&input[fed..next]);
            fed = next;
            let used = d
                .decode(&raw, &mut out, limit, 1024)
                .map_err(|r| r.status())?;
            raw.drain(..used);
        }
        Ok((out, raw.len() + input.len() - fed))
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_cut() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nGET /next";
        for step in [1, 2, 3, 7, body.len()] {
            let (out, rest) = decode_in_steps(body, step, 100).unwrap();
            assert_eq!(out, b"hello, world", "step {step}");
            assert_eq!(rest, b"GET /next".len(), "step {step}");
        }
        assert_eq!(decode_in_steps(b"zz\r\n", 4, 100), Err(400));
        assert_eq!(decode_in_steps(b"2\r\nabX\r\n0\r\n\r\n", 4, 100), Err(400));
        assert_eq!(decode_in_steps(b"65\r\n", 4, 100), Err(413));
        assert_eq!(decode_in_steps(b"5\r\nhello\r\n", 4, 100), Err(0));
    }
}
#[cfg(test)]
mod sizes {
    use super::*;

    /// What a connection holds while it waits is, first of all, its future: a
    /// large state inlined into `serve` (a request's body, the router's future,
    /// the answer) would be paid by every idle and parked connection. 1 KiB is
    /// about 1.5 times today's size (about 700 bytes).
    #[tokio::test]
    async fn a_waiting_connections_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let shared = Arc::new(Shared {
            router: Router::new(),
            limits: ConnLimits::new(crate::conn::FileBudget::for_files_max(4096)),
            body_bytes_max: 1,
            tag_peer: false,
        });
        let serving = serve(
            Conn::new(stream),
            addr,
            shared,
            Instant::now(),
            CancellationToken::new(),
            (),
        );
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 1024, "the connection's future is {size} bytes");
    }
}
