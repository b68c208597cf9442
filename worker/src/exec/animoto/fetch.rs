//! Getting a task's images into its scratch directory: `http(s)://` downloads
//! (bounded concurrency, per-image timeout, size cap, retries of transient errors
//! only), `file://` links, and `s3://` through the pluggable object store.
//! Every image is checked to be one by its first bytes.

use std::error::Error as StdError;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::ObjectStore;
use super::address::{AddressPolicy, CheckedConnector, Refused, refusal};
use super::magic::{ImageKind, SNIFF_LEN, describe_head};

/// Redirects followed per image (image hosts and CDNs redirect; loops must end).
const MAX_REDIRECTS: u32 = 5;

/// How images are fetched.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Images of one task downloaded at the same time.
    pub concurrency: usize,
    /// One attempt at one image, from connecting to the last byte.
    pub timeout: Duration,
    pub max_bytes: u64,
    /// Bytes all of one task's downloaded images may take in the scratch
    /// space (`None`: no limit but the disk's).
    pub task_bytes: Option<u64>,
    /// Extra attempts after a transient failure (connect error, connection
    /// lost, 429, 5xx).
    pub retries: u32,
    /// The first retry's delay; it doubles for each further one.
    pub retry_delay: Duration,
}

/// One image, ready for ffmpeg: `name` is relative to the scratch directory.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub name: String,
    pub kind: ImageKind,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    /// Refused before connecting: the address is not one downloads may reach.
    #[error("{url}: {refused}")]
    Refused { url: String, refused: Refused },
    #[error("{url}: request failed: {reason}")]
    Request { url: String, reason: String },
    /// The connection broke off (reset, or closed before the whole answer).
    #[error("{url}: connection lost: {reason}")]
    ConnectionLost { url: String, reason: String },
    #[error("{url}: no complete answer within {timeout:?}")]
    TimedOut { url: String, timeout: Duration },
    #[error("{url}: larger than the {limit}-byte limit per image")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "{url}: the task's images pass this worker's {limit}-byte limit per task (its scratch space, --animoto-task-bytes): use fewer or smaller images"
    )]
    OverTaskBytes { url: String, limit: u64 },
    #[error("{url}: not an image ({what})")]
    NotAnImage { url: String, what: String },
    #[error("{url}: more than {MAX_REDIRECTS} redirects, or a redirect without a usable Location")]
    Redirects { url: String },
    #[error("{url}: invalid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url}: {source}")]
    LocalFile {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: s3:// needs the S3 backend (this worker has no object store configured)")]
    NeedsS3 { url: String },
    #[error("{url}: {reason}")]
    Store { url: String, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("https is unavailable: {reason}")]
    Tls { reason: String },
}

impl FetchError {
    /// Worth another attempt: the server or the network may recover. A 404 or a
    /// 403 will not, and a timeout is not retried so that a slow host costs at
    /// most one timeout per image.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Connect { .. } | FetchError::ConnectionLost { .. } => true,
            FetchError::Status { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            _ => false,
        }
    }
}

type HttpsClient = Client<HttpsConnector<CheckedConnector>, Empty<Bytes>>;

/// The HTTP(S) client, built on first use: reading the system's CA certificates
/// costs milliseconds that workloads without downloads should not pay. It
/// connects only where `policy` allows.
pub struct HttpClient {
    policy: AddressPolicy,
    client: OnceLock<Result<HttpsClient, String>>,
}

impl HttpClient {
    pub fn new(policy: AddressPolicy) -> Self {
        Self {
            policy,
            client: OnceLock::new(),
        }
    }

    fn get(&self) -> Result<&HttpsClient, FetchError> {
        self.client
            .get_or_init(|| build_client(self.policy.clone()))
            .as_ref()
            .map_err(|reason| FetchError::Tls {
                reason: reason.clone(),
            })
    }
}

fn build_client(policy: AddressPolicy) -> Result<HttpsClient, String> {
    // An explicit provider: with both ring and aws-lc-rs compiled in (the AWS SDK
    // brings the latter), rustls has no default and would panic.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match builder.with_provider_and_native_roots(provider.clone()) {
        Ok(builder) => builder,
        Err(e) => {
            // Plain http and file:// still work; https fails per image, clearly.
            tracing::warn!(error = %e, "no CA certificates found (install ca-certificates): https downloads will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .wrap_connector(CheckedConnector::new(policy));
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Fetches one task's images into `dir` as `i00000.jpg`, `i00001.png`, ...
pub struct Fetcher<'a> {
    pub http: &'a HttpClient,
    pub store: Option<&'a dyn ObjectStore>,
    pub limits: &'a FetchLimits,
    pub dir: &'a Path,
}

impl Fetcher<'_> {
    /// All images, in order; the first failure stops the others (they are
    /// dropped, which closes their connections).
    pub async fn fetch_all(&self, urls: &[String]) -> Result<Vec<Fetched>, FetchError> {
        // Indices, not borrowed items, flow through the stream: a closure taking
        // `&String` makes the future not provably `Send` (a rustc limitation).
        let mut images = stream::iter(0..urls.len())
            .map(|index| async move { Ok((index, self.fetch(index, &urls[index]).await?)) })
            .buffer_unordered(self.limits.concurrency.max(1));
        let mut fetched: Vec<(usize, Fetched)> = Vec::with_capacity(urls.len());
        let mut stored = 0u64;
        while let Some((index, image)) = images.try_next().await? {
            // Bytes in the scratch space (a `file://` image is a link): a
            // pod's is small and shared, and filling it evicts the pod with
            // every task it runs.
            stored += std::fs::symlink_metadata(self.dir.join(&image.name)).map_or(0, |m| m.len());
            if let Some(limit) = self.limits.task_bytes
                && stored > limit
            {
                return Err(FetchError::OverTaskBytes {
                    url: urls[index].clone(),
                    limit,
                });
            }
            fetched.push((index, image));
        }
        fetched.sort_unstable_by_key(|(index, _)| *index);
        Ok(fetched.into_iter().map(|(_, f)| f).collect())
    }

    async fn fetch(&self, index: usize, url: &str) -> Result<Fetched, FetchError> {
        let stem = format!("i{index:05}");
        let fetched = if url.starts_with("http://") || url.starts_with("https://") {
            self.download(url, &stem).await?
        } else if let Some(rest) = url.strip_prefix("file://") {
            self.link_local(url, rest, &stem)?
        } else if url.starts_with("s3://") {
            self.get_from_store(url, &stem).await?
        } else {
            return Err(FetchError::BadUrl {
                url: url.to_string(),
                reason: "use http://, https://, s3:// or file://".into(),
            });
        };
        tracing::debug!(url, file = %fetched.name, kind = ?fetched.kind, "image fetched");
        Ok(fetched)
    }

    /// Downloads with retries of transient failures, each attempt under the timeout.
    async fn download(&self, url: &str, stem: &str) -> Result<Fetched, FetchError> {
        let client = self.http.get()?;
        let mut attempt = 0;
        loop {
            let once =
                tokio::time::timeout(self.limits.timeout, self.download_once(client, url, stem));
            let error = match once.await {
                Ok(Ok(fetched)) => return Ok(fetched),
                Ok(Err(e)) => e,
                Err(_elapsed) => {
                    return Err(FetchError::TimedOut {
                        url: url.to_string(),
                        timeout: self.limits.timeout,
                    });
                }
            };
            if !error.is_transient() || attempt >= self.limits.retries {
                return Err(error);
            }
            let delay = self.limits.retry_delay.saturating_mul(1 << attempt.min(16));
            tracing::debug!(url, %error, ?delay, "transient download failure, retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn download_once(
        &self,
        client: &HttpsClient,
        url: &str,
        stem: &str,
    ) -> Result<Fetched, FetchError> {
        let mut uri: Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| FetchError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        let mut redirects = 0;
        let response = loop {
            let request = Request::get(uri.clone())
                .header(
                    header::USER_AGENT,
                    concat!("cloudkon/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::new())
                .map_err(|e| FetchError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
            let response = client.request(request).await.map_err(|e| {
                // Refused at connect time, on this hop (the first URL or a
                // redirect's target): final, not worth a retry.
                if let Some(refused) = refusal(&e) {
                    return FetchError::Refused {
                        url: hop_name(url, &uri),
                        refused,
                    };
                }
                let reason = error_chain(&e);
                if e.is_connect() {
                    FetchError::Connect {
                        url: url.to_string(),
                        reason,
                    }
                } else if connection_lost(&e) {
                    FetchError::ConnectionLost {
                        url: url.to_string(),
                        reason,
                    }
                } else {
                    FetchError::Request {
                        url: url.to_string(),
                        reason,
                    }
                }
            })?;
            if !response.status().is_redirection() {
                break response;
            }
            redirects += 1;
            uri = match redirect_target(&uri, response.headers().get(header::LOCATION)) {
                Some(next) if redirects <= MAX_REDIRECTS => next,
                _ => {
                    return Err(FetchError::Redirects {
                        url: url.to_string(),
                    });
                }
            };
        };
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
            limit: self.limits.max_bytes,
        };
        // Named in a "not an image" reason; the body never is.
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.chars()
                    .filter(|c| !c.is_control())
                    .take(100)
                    .collect::<String>()
            });
        let content_type = content_type.as_deref();
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.limits.max_bytes) {
            return Err(too_large());
        }

        // Stream to disk: the first bytes decide the format (and the file name)
        // before anything is written; the cap is enforced as bytes arrive.
        let mut body = response.into_body();
        let mut head = Vec::with_capacity(SNIFF_LEN);
        let mut file: Option<(File, Fetched)> = None;
        let mut received = 0u64;
        loop {
            let data = match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    let reason = format!("reading the body: {}", error_chain(&e));
                    let url = url.to_string();
                    return Err(if connection_lost(&e) {
                        FetchError::ConnectionLost { url, reason }
                    } else {
                        FetchError::Request { url, reason }
                    });
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_trailers) => continue,
                },
            };
            received += data.len() as u64;
            if received > self.limits.max_bytes {
                return Err(too_large());
            }
            match &mut file {
                Some((f, fetched)) => self.write(f, &fetched.name, &data)?,
                None => {
                    head.extend_from_slice(&data);
                    if head.len() >= SNIFF_LEN {
                        file = Some(self.create(url, stem, &head, content_type)?);
                    }
                }
            }
        }
        let (mut f, fetched) = match file {
            Some(open) => open,
            None => self.create(url, stem, &head, content_type)?,
        };
        f.flush()
            .map_err(|source| self.write_error(&fetched.name, source))?;
        Ok(fetched)
    }

    /// Creates the image's file from its first bytes, if they are an image's.
    fn create(
        &self,
        url: &str,
        stem: &str,
        head: &[u8],
        content_type: Option<&str>,
    ) -> Result<(File, Fetched), FetchError> {
        let kind = ImageKind::sniff(head).ok_or_else(|| FetchError::NotAnImage {
            url: url.to_string(),
            what: format!(
                "HTTP 200, Content-Type {}, {}",
                content_type.unwrap_or("not given"),
                describe_head(head)
            ),
        })?;
        let name = format!("{stem}.{}", kind.extension());
        let mut f =
            File::create(self.dir.join(&name)).map_err(|source| self.write_error(&name, source))?;
        self.write(&mut f, &name, head)?;
        Ok((f, Fetched { name, kind }))
    }

    // Blocking writes on purpose: chunks are small and land in the page cache, and
    // a synchronous write cannot outlive the task's scratch directory when the
    // task is abandoned (a write on tokio's blocking pool could).
    fn write(&self, f: &mut File, name: &str, bytes: &[u8]) -> Result<(), FetchError> {
        f.write_all(bytes)
            .map_err(|source| self.write_error(name, source))
    }

    fn write_error(&self, name: &str, source: io::Error) -> FetchError {
        FetchError::Write {
            path: self.dir.join(name),
            source,
        }
    }

    /// A `file://` image is linked, not copied; it is still checked.
    fn link_local(&self, url: &str, rest: &str, stem: &str) -> Result<Fetched, FetchError> {
        let path = file_url_path(rest).map_err(|reason| FetchError::BadUrl {
            url: url.to_string(),
            reason,
        })?;
        let local = |source| FetchError::LocalFile {
            url: url.to_string(),
            source,
        };
        let path = std::path::absolute(&path).map_err(local)?;
        // Looked at before it is opened: opening a FIFO waits for a writer,
        // holding the slot's thread past any timeout or interrupt.
        let meta = std::fs::metadata(&path).map_err(local)?;
        if !meta.is_file() {
            return Err(local(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (a directory, a FIFO or a device)",
            )));
        }
        let mut file = File::open(&path).map_err(local)?;
        let size = file.metadata().map_err(local)?.len();
        if size > self.limits.max_bytes {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit: self.limits.max_bytes,
            });
        }
        let mut head = Vec::with_capacity(SNIFF_LEN);
        (&mut file)
            .take(SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .map_err(local)?;
        let kind = ImageKind::sniff(&head).ok_or_else(|| FetchError::NotAnImage {
            url: url.to_string(),
            what: describe_head(&head),
        })?;
        let name = format!("{stem}.{}", kind.extension());
        std::os::unix::fs::symlink(&path, self.dir.join(&name))
            .map_err(|source| self.write_error(&name, source))?;
        Ok(Fetched { name, kind })
    }

    async fn get_from_store(&self, url: &str, stem: &str) -> Result<Fetched, FetchError> {
        let Some(store) = self.store else {
            return Err(FetchError::NeedsS3 {
                url: url.to_string(),
            });
        };
        let partial = self.dir.join(format!("{stem}.download"));
        store
            .get(url, &partial, self.limits.max_bytes)
            .await
            .map_err(|e| FetchError::Store {
                url: url.to_string(),
                reason: error_chain(e.as_ref()),
            })?;
        let mut head = Vec::with_capacity(SNIFF_LEN);
        File::open(&partial)
            .and_then(|f| f.take(SNIFF_LEN as u64).read_to_end(&mut head))
            .map_err(|source| self.write_error(&format!("{stem}.download"), source))?;
        let kind = ImageKind::sniff(&head).ok_or_else(|| FetchError::NotAnImage {
            url: url.to_string(),
            what: describe_head(&head),
        })?;
        let name = format!("{stem}.{}", kind.extension());
        std::fs::rename(&partial, self.dir.join(&name))
            .map_err(|source| self.write_error(&name, source))?;
        Ok(Fetched { name, kind })
    }
}

/// How a failed hop is named: the task's URL, and the redirect's target
/// when the failure is there.
fn hop_name(url: &str, hop: &Uri) -> String {
    let hop = hop.to_string();
    if hop == url {
        url.to_string()
    } else {
        format!("{url} (redirected to {hop})")
    }
}

/// Whether `error` (or a cause) is the connection breaking off: reset,
/// aborted, or closed before the answer was complete (a body shorter than its
/// Content-Length). The next attempt may well get through.
fn connection_lost(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<hyper::Error>()
            && e.is_incomplete_message()
        {
            return true;
        }
        if let Some(e) = e.downcast_ref::<io::Error>()
            && matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The next URI of a redirect: its `Location` resolved against the current
/// URI as RFC 3986 (5.2) says (`//host/p`, `/p`, `p`, `../p`, `?q`), and only
/// to http(s). The target's address is checked when it is connected to.
fn redirect_target(current: &Uri, location: Option<&header::HeaderValue>) -> Option<Uri> {
    let location = location?.to_str().ok()?;
    // A fragment is for the client, never sent.
    let location = location.split_once('#').map_or(location, |(l, _)| l);
    let scheme = current.scheme_str()?;
    let authority = current.authority()?.as_str();
    if let Some((name, _)) = location.split_once(':')
        && is_scheme(name)
    {
        return ["http", "https"]
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s))
            .then(|| location.parse().ok())
            .flatten();
    }
    let target = if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else {
        let (path, query) = match location.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (location, None),
        };
        let path = if path.is_empty() {
            current.path().to_string()
        } else if path.starts_with('/') {
            remove_dot_segments(path)
        } else {
            // Relative to the current path's directory.
            let base = current.path();
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            remove_dot_segments(&format!("/{}{path}", dir.trim_start_matches('/')))
        };
        let query = match (query, location.is_empty()) {
            (Some(query), _) => Some(query),
            // An empty reference is the current URI itself.
            (None, true) => current.query(),
            (None, false) => None,
        };
        match query {
            Some(query) => format!("{scheme}://{authority}{path}?{query}"),
            None => format!("{scheme}://{authority}{path}"),
        }
    };
    target.parse().ok()
}

/// RFC 3986's `scheme`: a letter, then letters, digits, `+`, `-` and `.`.
fn is_scheme(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// An absolute path without its `.` and `..` segments (RFC 3986, 5.2.4).
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            segment => {
                kept.push(segment);
                continue;
            }
        }
        // `a/.` and `a/..` name a directory: the path keeps its last slash.
        if last {
            kept.push("");
        }
    }
    format!("/{}", kept.join("/"))
}

/// The local path of a `file://` URL's remainder: `/abs/path` or
/// `localhost/abs/path`, percent-decoded.
fn file_url_path(rest: &str) -> Result<PathBuf, String> {
    let path = if rest.starts_with('/') {
        rest
    } else if rest.starts_with("localhost/") {
        &rest["localhost".len()..]
    } else {
        return Err("a file:// URL names a local absolute path: file:///dir/image.jpg".into());
    };
    let bytes = percent_decode(path.as_bytes())
        .ok_or_else(|| "bad percent-encoding in the path".to_string())?;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(out)
}

/// An error and its causes, `outer: inner: root`: hyper's own messages are
/// terse ("client error (Connect)") and the cause is the useful part.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_map_to_paths() {
        assert_eq!(file_url_path("/tmp/a.png"), Ok(PathBuf::from("/tmp/a.png")));
        assert_eq!(
            file_url_path("localhost/tmp/a%20b.png"),
            Ok(PathBuf::from("/tmp/a b.png"))
        );
        assert!(file_url_path("host/tmp/a.png").is_err());
        assert!(file_url_path("/tmp/%zz").is_err());
    }

    #[test]
    fn only_connect_errors_429_and_5xx_are_transient() {
        let status = |code| FetchError::Status {
            url: "u".into(),
            status: StatusCode::from_u16(code).unwrap(),
        };
        assert!(status(503).is_transient());
        assert!(status(500).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(!status(403).is_transient());
        assert!(
            FetchError::Connect {
                url: "u".into(),
                reason: "refused".into()
            }
            .is_transient()
        );
        assert!(
            !FetchError::TimedOut {
                url: "u".into(),
                timeout: Duration::from_secs(1)
            }
            .is_transient()
        );
    }

    #[test]
    fn redirects_resolve_absolute_and_same_origin_locations() {
        let here: Uri = "http://h:8/a/b.jpg".parse().unwrap();
        let to = |l: &str| redirect_target(&here, Some(&header::HeaderValue::from_str(l).unwrap()));
        assert_eq!(to("/c.jpg").unwrap().to_string(), "http://h:8/c.jpg");
        assert_eq!(
            to("https://x/y.png").unwrap().to_string(),
            "https://x/y.png"
        );
        assert_eq!(
            to("relative.jpg").unwrap().to_string(),
            "http://h:8/a/relative.jpg"
        );
        assert_eq!(to("//x:9/y.png").unwrap().to_string(), "http://x:9/y.png");
        assert_eq!(to("ftp://x/y.png"), None);
        assert_eq!(to("file:///etc/passwd"), None);
        assert_eq!(redirect_target(&here, None), None);
    }

    /// RFC 3986's own examples (5.4.1 and 5.4.2), less those with a
    /// non-http scheme.
    #[test]
    fn redirects_resolve_as_rfc_3986_says() {
        let base: Uri = "http://a/b/c/d;p?q".parse().unwrap();
        for (location, target) in [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g/"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("#s", "http://a/b/c/d;p?q"),
            ("g#s", "http://a/b/c/g"),
            ("g?y#s", "http://a/b/c/g?y"),
            (";x", "http://a/b/c/;x"),
            ("g;x?y#s", "http://a/b/c/g;x?y"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../", "http://a/"),
            ("../../g", "http://a/g"),
            ("../../../g", "http://a/g"),
            ("../../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("/../g", "http://a/g"),
            ("g.", "http://a/b/c/g."),
            (".g", "http://a/b/c/.g"),
            ("g..", "http://a/b/c/g.."),
            ("..g", "http://a/b/c/..g"),
            ("./../g", "http://a/b/g"),
            ("./g/.", "http://a/b/c/g/"),
            ("g/./h", "http://a/b/c/g/h"),
            ("g/../h", "http://a/b/c/h"),
            ("g;x=1/./y", "http://a/b/c/g;x=1/y"),
            ("g;x=1/../y", "http://a/b/c/y"),
            ("g?y/./x", "http://a/b/c/g?y/./x"),
            ("g#s/../x", "http://a/b/c/g"),
            ("HTTPS://x/y", "https://x/y"),
        ] {
            let value = header::HeaderValue::from_str(location).unwrap();
            let got = redirect_target(&base, Some(&value));
            assert_eq!(
                got.map(|u| u.to_string()).as_deref(),
                Some(target),
                "{location}"
            );
        }
    }

    #[test]
    fn a_broken_connection_is_transient() {
        let lost = io::Error::new(io::ErrorKind::UnexpectedEof, "cut short");
        assert!(connection_lost(&lost));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(connection_lost(&reset));
        assert!(!connection_lost(&io::Error::from(
            io::ErrorKind::InvalidData
        )));
        assert!(
            FetchError::ConnectionLost {
                url: "u".into(),
                reason: "reset".into()
            }
            .is_transient()
        );
    }
}
