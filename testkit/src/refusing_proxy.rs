//! An HTTP proxy on loopback, in front of an AWS test server, that answers
//! the requests a rule picks with an AWS `AccessDenied` instead of passing
//! them on: what IAM does to a role that lacks one permission, which the test
//! servers do not enforce. Each request gets its own connections (both sides
//! told `Connection: close`), so that the proxy reads one request and one
//! response at a time and never has to frame a kept-alive stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A request as the rule sees it.
pub struct Request {
    /// Header names lowercased, with their values.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_contains(&self, text: &str) -> bool {
        self.body
            .windows(text.len().max(1))
            .any(|w| w == text.as_bytes())
    }
}

type Rule = dyn Fn(&Request) -> bool + Send + Sync;

/// Runs until dropped.
pub struct RefusingProxy {
    addr: SocketAddr,
    refused: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
}

impl RefusingProxy {
    /// Listens on a loopback port and passes each request on to `upstream`
    /// (`http://127.0.0.1:PORT`, a test server's endpoint), but those `refuse`
    /// picks, which get an AWS JSON `AccessDenied` (HTTP 400).
    pub fn start(
        upstream: &str,
        refuse: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) -> RefusingProxy {
        let upstream: SocketAddr = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("upstream {upstream}: {e}"));
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only forwards to loopback, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the refusing proxy");
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicU64::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let rule: Arc<Rule> = Arc::new(refuse);
        let (count, stop) = (refused.clone(), stopped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (rule, count) = (rule.clone(), count.clone());
                std::thread::spawn(move || {
                    // A broken connection is the client's or the server's
                    // business: the SDK retries, as it would in the cloud.
                    let _ = serve(client, upstream, &*rule, &count);
                });
            }
        });
        RefusingProxy {
            addr,
            refused,
            stopped,
        }
    }

    /// In front of the SQS server of `AWS_ENDPOINT_URL_SQS`, refusing every
    /// `SendMessage*` to the queue named `queue`, as IAM (or a policy on that
    /// queue) would, and passing everything else on.
    pub fn refusing_sends_to(queue: &str) -> RefusingProxy {
        let sqs = std::env::var("AWS_ENDPOINT_URL_SQS").expect("AWS_ENDPOINT_URL_SQS");
        let queue = queue.to_string();
        RefusingProxy::start(&sqs, move |r| {
            r.header("x-amz-target")
                .is_some_and(|t| t.starts_with("AmazonSQS.SendMessage"))
                && r.body_contains(&queue)
        })
    }

    /// The endpoint to give the client (`AWS_ENDPOINT_URL_<SERVICE>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for RefusingProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    refuse: &Rule,
    refused: &AtomicU64,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let (head, request) = read_request(&mut reader)?;
    let mut client = client;
    if refuse(&request) {
        refused.fetch_add(1, Ordering::Relaxed);
        let body = r#"{"__type":"com.amazonaws.sqs#AccessDenied","message":"Access to the resource is denied (refused by the test's proxy)"}"#;
        write!(
            client,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n\
             x-amzn-query-error: AccessDenied;Sender\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )?;
        return client.shutdown(Shutdown::Write);
    }
    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(Duration::from_secs(60)))?;
    server.write_all(&head)?;
    server.write_all(&request.body)?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    client.write_all(&closing(&response))?;
    client.shutdown(Shutdown::Write)
}

/// One request: its head as sent on (with `Connection: close`), and what the
/// rule sees. Bodies framed by Content-Length only, as the AWS SDK sends them.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<(Vec<u8>, Request)> {
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut head = request_line.into_bytes();
    for (name, value) in headers.iter().filter(|(n, _)| n != "connection") {
        head.extend(format!("{name}: {value}\r\n").bytes());
    }
    head.extend(b"connection: close\r\n\r\n");
    Ok((head, Request { headers, body }))
}

/// `response` with its Connection header replaced by `close`: the client must
/// not send another request on a connection the proxy closes.
fn closing(response: &[u8]) -> Vec<u8> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return response.to_vec();
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let mut out = String::new();
    for line in head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
    {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&response[end + 4..]);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on loopback that answers every request with
    /// its body echoed.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (_, request) = read_request(&mut reader).unwrap();
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n",
                    request.body.len()
                )
                .unwrap();
                stream.write_all(&request.body).unwrap();
            }
        });
        addr
    }

    fn post(proxy: &RefusingProxy, target: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: {target}\r\nConnection: keep-alive\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn passes_requests_on_but_those_it_refuses_and_closes_each_connection() {
        let upstream = echo_server();
        let proxy = RefusingProxy::start(&format!("http://{upstream}"), |r| {
            r.header("x-amz-target") == Some("AmazonSQS.SendMessageBatch")
                && r.body_contains("cloudkon-tb-")
        });
        let passed = post(
            &proxy,
            "AmazonSQS.SendMessageBatch",
            r#"{"QueueUrl":"q/other"}"#,
        );
        assert!(passed.starts_with("HTTP/1.1 200 OK\r\n"), "{passed}");
        assert!(passed.contains("Connection: close\r\n"), "{passed}");
        assert!(!passed.contains("keep-alive"), "{passed}");
        assert!(passed.ends_with(r#"{"QueueUrl":"q/other"}"#), "{passed}");
        let refused = post(
            &proxy,
            "AmazonSQS.SendMessageBatch",
            r#"{"QueueUrl":"q/cloudkon-tb-x"}"#,
        );
        assert!(refused.starts_with("HTTP/1.1 400 "), "{refused}");
        assert!(refused.contains("AccessDenied"), "{refused}");
        let other = post(
            &proxy,
            "AmazonSQS.ReceiveMessage",
            r#"{"QueueUrl":"q/cloudkon-tb-x"}"#,
        );
        assert!(other.starts_with("HTTP/1.1 200 OK\r\n"), "{other}");
        assert_eq!(proxy.refused(), 1);
    }
}
