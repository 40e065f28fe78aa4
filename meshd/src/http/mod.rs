//! meshd's HTTP listener (`metrics-address`): a small HTTP/1.1 server with a route table, for
//! `/metrics` and whatever else a node shows over HTTP.
//!
//! Hand-rolled on tokio rather than a crate, because what it must do is little and what it must
//! refuse is the point: every request is a GET (or HEAD) of a path, answered from memory, one per
//! connection. hyper would bring a second HTTP stack's worth of code and its own limits to
//! configure (header size, connection count, timeouts) to reach the same few bounds, which are
//! written here in one place:
//! - the head (request line and headers) is at most [`MAX_HEAD`] bytes, read within
//!   [`HEAD_TIMEOUT`]; a longer one is answered 431, a slower one 408, and closed;
//! - at most [`MAX_CONNECTIONS`] connections are served at once: one more is answered 503 with
//!   a fixed response, without a task or a buffer of its own, and closed;
//! - one request per connection (`Connection: close`), its answer written within
//!   [`WRITE_TIMEOUT`]; a body is never read.
//!
//! So a stranger's garbage, huge headers or a thousand idle connections cost at most
//! `MAX_CONNECTIONS × MAX_HEAD` of buffers and a few seconds of a slot each, on the control-plane
//! runtime: the data path runs on threads of its own and never waits for it.
//!
//! Routes are added to a [`Router`] by path; a handler is an async function of the
//! [`Request`]. An unknown path is answered 404.

mod request;
#[cfg(test)]
mod tests;

pub use request::{Method, Request, Status};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use request::{head_end, Head};

/// The longest request head read: a browser's or Prometheus's request is well under 1 KiB.
pub const MAX_HEAD: usize = 8 << 10;
/// Connections served at once. Prometheus holds one per scrape; a person's browser a few.
pub const MAX_CONNECTIONS: usize = 64;
/// The head must arrive within this, or the connection is answered 408 and closed.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The answer must be taken within this (a client that does not read loses its slot).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The request in `bytes`, once its head has ended (`None` before): what the listener answers,
/// or the status it refuses it with. (Public for its fuzz target.)
pub fn parse_head(bytes: &[u8]) -> Option<Result<Request, Status>> {
    let end = head_end(bytes)?;
    Some(match request::parse(&bytes[..end]) {
        Head::Request(r) => Ok(r),
        Head::Refused(s) => Err(s),
    })
}

/// The answer to a connection beyond [`MAX_CONNECTIONS`]: fixed bytes, written without waiting.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n";

/// An answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: Status::Ok,
            content_type,
            body: body.into(),
        }
    }

    /// A status with its reason phrase as a plain-text body.
    pub fn status(status: Status) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{}\n", status.line()).into_bytes(),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Response> + Send>>;
type Handler = Arc<dyn Fn(Request) -> BoxFuture + Send + Sync>;

/// Paths and what answers them.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<(String, Handler)>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Answer GET (and HEAD) of `path` with `handler`. A later route for the same path wins.
    pub fn route<F, Fut>(mut self, path: &str, handler: F) -> Router
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        self.routes.retain(|(p, _)| p != path);
        let h: Handler = Arc::new(move |r| Box::pin(handler(r)));
        self.routes.push((path.to_string(), h));
        self
    }

    async fn answer(&self, req: Request) -> Response {
        match self.routes.iter().find(|(p, _)| *p == req.path) {
            Some((_, h)) => h(req).await,
            None => Response::status(Status::NotFound),
        }
    }
}

/// The bounds of one listener: [`MAX_CONNECTIONS`] and [`HEAD_TIMEOUT`] unless a test needs
/// smaller ones.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub head_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: MAX_CONNECTIONS,
            head_timeout: HEAD_TIMEOUT,
        }
    }
}

/// What the listener has seen since start, by outcome (kept across a move to a new address).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered by a route (whatever its status).
    pub served: AtomicU64,
    /// Paths no route serves.
    pub not_found: AtomicU64,
    /// Heads that were not a GET or HEAD request (garbage, another method, another version).
    pub bad: AtomicU64,
    /// Heads longer than [`MAX_HEAD`].
    pub too_large: AtomicU64,
    /// Connections whose head did not arrive within [`HEAD_TIMEOUT`] (or that closed first).
    pub timed_out: AtomicU64,
    /// Connections beyond [`MAX_CONNECTIONS`], answered 503.
    pub busy: AtomicU64,
}

/// A listener serving a router; stops when dropped (connections in progress finish within
/// their timeouts).
pub struct Server {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Bind `addr` and serve `router` on the current runtime.
    pub async fn start(
        addr: SocketAddr,
        router: Router,
        counters: Arc<Counters>,
        limits: Limits,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, Arc::new(router), counters, limits));
        Ok(Server {
            addr,
            task: Some(task),
        })
    }

    /// The address it listens on (the port the kernel chose, when asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening, and return once the listening socket is closed (so its address can be
    /// bound again at once; a plain drop closes it a moment later).
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    counters: Arc<Counters>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut last_error = None;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin, say so once.
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(error = %text, "the HTTP listener cannot accept; retrying");
                    last_error = Some(text);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        last_error = None;
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let (router, counters) = (router.clone(), counters.clone());
                tokio::spawn(async move {
                    serve(stream, &router, &counters, limits.head_timeout).await;
                    drop(permit);
                });
            }
            Err(_) => {
                counters.busy.fetch_add(1, Relaxed);
                // A fresh socket's send buffer takes these bytes at once; if not, no matter.
                let _ = stream.try_write(BUSY);
                // What the client already sent is read and dropped, so that closing does not
                // reset the connection (and discard the answer) over unread bytes.
                let mut sink = [0u8; 1024];
                for _ in 0..MAX_HEAD / sink.len() {
                    if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        }
    }
}

/// One connection: read the head, answer, close.
async fn serve(mut stream: TcpStream, router: &Router, counters: &Counters, timeout: Duration) {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(timeout, read_head(&mut stream, &mut buf)).await;
    let (response, head_only) = match read {
        Err(_) | Ok(Err(Unread::Closed)) => {
            counters.timed_out.fetch_add(1, Relaxed);
            (Response::status(Status::RequestTimeout), false)
        }
        Ok(Err(Unread::TooLarge)) => {
            counters.too_large.fetch_add(1, Relaxed);
            (Response::status(Status::HeaderFieldsTooLarge), false)
        }
        Ok(Ok(n)) => match request::parse(&buf[..n]) {
            Head::Refused(status) => {
                counters.bad.fetch_add(1, Relaxed);
                (Response::status(status), false)
            }
            Head::Request(req) => {
                let head_only = req.method == Method::Head;
                let r = router.answer(req).await;
                let counter = match r.status {
                    Status::NotFound => &counters.not_found,
                    _ => &counters.served,
                };
                counter.fetch_add(1, Relaxed);
                (r, head_only)
            }
        },
    };
    drop(buf);
    write(&mut stream, &response, head_only).await;
}

/// Why no head was read.
enum Unread {
    /// The peer closed (or failed) before the head ended.
    Closed,
    /// The head passed [`MAX_HEAD`].
    TooLarge,
}

/// Read until the head ends; its length in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Unread> {
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Unread::Closed),
            Ok(n) => n,
        };
        // Only the new bytes (and the 3 before them) can complete the blank line.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            let end = from + end;
            if end > MAX_HEAD {
                return Err(Unread::TooLarge);
            }
            return Ok(end);
        }
        if buf.len() >= MAX_HEAD {
            return Err(Unread::TooLarge);
        }
    }
}

/// Write the status line, the headers and (unless `head_only`: the answer to a HEAD) the
/// body, then close.
async fn write(stream: &mut TcpStream, r: &Response, head_only: bool) {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\n\r\n",
        r.status.line(),
        r.content_type,
        r.body.len(),
    );
    let done = async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(&r.body).await?;
        }
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, done).await;
}

/// A counter's value (for readers outside this module).
pub(crate) fn load(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}
