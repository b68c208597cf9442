//! A tiny HTTP/1.1 server on 127.0.0.1, for tests and benches of the Animoto
//! downloads: a real socket and real HTTP, with replies scripted per request
//! (errors, slow bodies, 503-then-200) that a stock file server cannot give.
//! One request per connection (`Connection: close`); GET only. Not for production.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the server answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Waited before the status line is sent (to provoke client timeouts).
    pub delay: Duration,
    /// A `Location` header, for redirects.
    pub location: Option<String>,
}

impl Reply {
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type,
            body,
            delay: Duration::ZERO,
            location: None,
        }
    }

    /// A redirect (`status` 301, 302, 307 or 308) to `location`.
    pub fn redirect(status: u16, location: impl Into<String>) -> Self {
        Self {
            location: Some(location.into()),
            ..Self::status(status)
        }
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: format!("status {status}\n").into_bytes(),
            delay: Duration::ZERO,
            location: None,
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&str) -> Reply + Send + Sync;

/// A running server; stops (and drops its connections) when dropped.
pub struct LoopbackServer {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl LoopbackServer {
    /// Starts serving on a free loopback port; `handler` maps a request path
    /// (with its query) to a reply.
    pub async fn start(
        handler: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Self> {
        Self::start_on(Ipv4Addr::LOCALHOST, handler).await
    }

    /// As [`Self::start`], on another loopback address (`127.0.0.2`...): a
    /// test can then allow one server's address and not another's.
    pub async fn start_on(
        ip: Ipv4Addr,
        handler: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Self> {
        assert!(ip.is_loopback(), "the test server stays on loopback");
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let handler: Arc<Handler> = Arc::new(handler);
        let accept = tokio::spawn(async move {
            // Connections live in this set, so dropping the server ends them too.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(serve(stream, handler.clone()));
                        }
                        Err(e) => tracing::warn!(error = %e, "loopback server: accept failed"),
                    },
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Ok(Self { addr, accept })
    }

    /// Serves the files of `dir` by name (`/name`); 404 for anything else.
    pub async fn serve_dir(dir: PathBuf) -> io::Result<Self> {
        Self::start(move |path| {
            let name = path.trim_start_matches('/');
            if name.is_empty() || name.contains('/') || name.contains("..") {
                return Reply::status(404);
            }
            match std::fs::read(dir.join(name)) {
                Ok(body) => Reply::ok("application/octet-stream", body),
                Err(_) => Reply::status(404),
            }
        })
        .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDRESS:PORT/` followed by `path` (without its leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(mut stream: TcpStream, handler: Arc<Handler>) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let request = String::from_utf8_lossy(&head);
    let path = request.split_ascii_whitespace().nth(1).unwrap_or("/");
    let reply = handler(path);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let location = reply
        .location
        .as_deref()
        .map_or(String::new(), |l| format!("Location: {l}\r\n"));
    let header = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{location}Connection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    // One write, without Nagle: a header and a body in two small segments would
    // wait for the client's delayed ACK (40 ms a request on Linux).
    let _ = stream.set_nodelay(true);
    let mut message = header.into_bytes();
    message.extend_from_slice(&reply.body);
    // The client may have given up (timeouts are what some tests provoke).
    if stream.write_all(&message).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
