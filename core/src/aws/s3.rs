//! S3: task inputs and artifacts (Animoto images and videos, large outputs).

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use futures_util::{StreamExt as _, TryStreamExt as _};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _};

use super::error::{AwsError, ErrorKind};

const SERVICE: &str = "S3";
/// Files above this go up in parts: a failed part is retried alone, and parts
/// go up in parallel.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
const CONCURRENT_PARTS: usize = 4;
/// S3's limits on a multipart upload.
const MAX_PARTS: u64 = 10_000;
const MAX_OBJECT: u64 = 5 << 40;

/// The part size for a file of `size` bytes: [`PART_SIZE`], or bigger (whole
/// MiB) for a file that would need more than S3's 10,000 parts (over 78
/// GiB), which S3 refused at part 10,001, after 80 GB sent.
fn part_size(size: u64) -> u64 {
    let mib = 1 << 20;
    PART_SIZE.max(size.div_ceil(MAX_PARTS).div_ceil(mib) * mib)
}

/// `s3://bucket/key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Uri {
    pub bucket: String,
    /// May be empty (a whole bucket, as a prefix).
    pub key: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum S3UriError {
    #[error("`{0}` is not an S3 URI: it must start with s3://")]
    NotS3(String),
    #[error("`{0}` has no bucket name: expected s3://BUCKET/KEY")]
    NoBucket(String),
    #[error("`{0}` names no object: expected s3://BUCKET/KEY")]
    NoKey(String),
}

/// A place for Animoto videos that is neither a directory nor an S3 URI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VideoPlaceError {
    #[error(transparent)]
    S3(#[from] S3UriError),
    #[error("`{0}` is not a place for videos: give a local directory or s3://BUCKET/PREFIX{hint}",
        hint = if .0.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("s3://")) {
            " (s3:// in lowercase)"
        } else {
            ""
        })]
    Scheme(String),
}

/// Checks how a place for videos is written (what a workload's line says,
/// and what a worker checks before its downloads): `s3://` must name a
/// bucket, and anything else empty or with a `://` is a typo or an
/// unsupported scheme, not a directory to create (`S3://b` made `./S3:/b`).
pub fn check_video_place(place: &str) -> Result<(), VideoPlaceError> {
    if place.starts_with("s3://") {
        S3Uri::parse(place)?;
    } else if place.contains("://") || place.trim().is_empty() {
        return Err(VideoPlaceError::Scheme(place.to_string()));
    }
    Ok(())
}

impl S3Uri {
    /// `s3://bucket`, `s3://bucket/` or `s3://bucket/prefix/key`.
    pub fn parse(uri: &str) -> Result<Self, S3UriError> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| S3UriError::NotS3(uri.to_string()))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(S3UriError::NoBucket(uri.to_string()));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// Whether the bucket's name is one S3 allows (3 to 63 lowercase letters,
    /// digits, `-` and `.`): checked where a user's URI is accepted for
    /// later, not on every use (local servers take other names).
    pub fn has_valid_bucket_name(&self) -> bool {
        (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    }

    /// Like [`S3Uri::parse`], but the key must name an object.
    pub fn object(uri: &str) -> Result<Self, S3UriError> {
        let parsed = Self::parse(uri)?;
        if parsed.key.is_empty() || parsed.key.ends_with('/') {
            return Err(S3UriError::NoKey(uri.to_string()));
        }
        Ok(parsed)
    }
}

impl FromStr for S3Uri {
    type Err = S3UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// An object being read (see [`S3Store::open`]).
pub struct ObjectReader {
    /// The object's size in bytes, as the server declares it.
    pub size: Option<u64>,
    pub body: Pin<Box<dyn AsyncBufRead + Send>>,
}

/// An object read whole under a caller's limit, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    Bytes(Vec<u8>),
    /// Over the limit. `declared`: the server said so and nothing was read;
    /// otherwise `size` is what was read when the body went past the limit
    /// (`limit + 1`: the body may be longer).
    TooLarge {
        size: u64,
        declared: bool,
    },
}

impl ObjectReader {
    /// Reads the body whole if it is at most `limit` bytes: refused before
    /// reading when the declared size is over it, and after `limit + 1`
    /// bytes when the body runs past it (a wrong or missing Content-Length
    /// cannot make it read or hold more). Never holds more than `limit`
    /// bytes, nor allocates more: one user's workload must not take the
    /// operator's memory.
    pub async fn read_at_most(self, limit: u64) -> std::io::Result<Limited> {
        if let Some(size) = self.size.filter(|&n| n > limit) {
            return Ok(Limited::TooLarge {
                size,
                declared: true,
            });
        }
        let cap = usize::try_from(limit).unwrap_or(usize::MAX);
        // The declared size, if any, up front (it is within the limit here).
        let mut bytes = Vec::with_capacity(self.size.map_or(0, |n| n as usize).min(cap));
        let mut body = self.body.take(limit.saturating_add(1));
        loop {
            let chunk = body.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(Limited::Bytes(bytes));
            }
            let n = chunk.len();
            if bytes.len() + n > cap {
                return Ok(Limited::TooLarge {
                    size: (bytes.len() + n) as u64,
                    declared: false,
                });
            }
            if bytes.capacity() - bytes.len() < n {
                // Doubling, as a Vec would, but never past the limit.
                let want = (bytes.capacity() * 2).max(bytes.len() + n).min(cap);
                bytes.reserve_exact(want - bytes.len());
            }
            bytes.extend_from_slice(chunk);
            body.consume(n);
        }
    }
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// S3 with the program's settings and request counting. Cheap to clone.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    settings: super::config::AwsSettings,
}

/// A multipart upload under way: aborted if it fails, and if it is dropped
/// unfinished (its task timed out or was cancelled), so that no orphan parts
/// are billed (S3 keeps them until the upload is aborted or a lifecycle
/// rule removes them).
struct OpenUpload {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    /// `None` once completed or aborted.
    upload_id: Option<String>,
}

impl OpenUpload {
    fn request(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let upload_id = self.upload_id.take()?;
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload_id);
        let resource = uri(&self.bucket, &self.key);
        Some(async move {
            if let Err(e) = request.send().await {
                tracing::warn!(
                    %resource, upload_id,
                    error = %err("AbortMultipartUpload", resource.clone(), e),
                    "could not abort an unfinished multipart upload: its parts are billed until a lifecycle rule removes them"
                );
            }
        })
    }

    async fn abort(&mut self) {
        if let Some(abort) = self.request() {
            abort.await;
        }
    }
}

impl Drop for OpenUpload {
    fn drop(&mut self) {
        // Dropped mid-upload: the abort goes on in the background (outside a
        // runtime, as at a process's exit, there is none to run it on).
        if let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Some(abort) = self.request()
        {
            runtime.spawn(abort);
        }
    }
}

/// The slowest upload taken for a live one: a request's timeouts grow by
/// its body's time at this rate. The timeouts of other calls (5 s) held
/// the sending of the body too: an 8 MiB part needed 1.6 MB/s, four at
/// once 6.7 MB/s, or every attempt failed.
const SLOWEST_UPLOAD_BYTES_PER_SECOND: f64 = 256.0 * 1024.0;

fn uri(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

fn err<E>(
    operation: &'static str,
    resource: String,
    e: aws_sdk_s3::error::SdkError<E, HttpResponse>,
) -> AwsError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut e = AwsError::sdk(SERVICE, operation, resource, e);
    if e.kind == ErrorKind::NotFound {
        e.message = format!("{} does not exist ({})", e.resource, e.message);
    }
    e
}

fn io_error(operation: &'static str, resource: String, what: String) -> AwsError {
    AwsError::new(SERVICE, operation, resource, ErrorKind::Permanent, what)
}

impl crate::store::ObjectStore for S3Store {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<(), crate::store::StoreError> {
        self.put_bytes(bucket, key, bytes)
            .await
            .map_err(|e| crate::store::StoreError(e.to_string()))
    }

    async fn keys(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        self.list_keys(bucket, prefix)
            .await
            .map_err(|e| crate::store::StoreError(e.to_string()))
    }
}

impl S3Store {
    pub(crate) fn new(client: aws_sdk_s3::Client, settings: super::config::AwsSettings) -> Self {
        Self { client, settings }
    }

    /// The timeouts of a request that sends `bytes`.
    fn upload_config(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        let sending = Duration::from_secs_f64(bytes as f64 / SLOWEST_UPLOAD_BYTES_PER_SECOND);
        aws_sdk_s3::config::Builder::default().timeout_config(self.settings.timeouts(sending))
    }

    /// Creates the bucket if this account does not have it yet.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<(), AwsError> {
        let mut request = self.client.create_bucket().bucket(bucket);
        // us-east-1 is the default and must not be named.
        if let Some(region) = self
            .client
            .config()
            .region()
            .map(|r| r.as_ref().to_string())
            && region != "us-east-1"
        {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket, "bucket created");
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(e) => Err(err("CreateBucket", uri(bucket, ""), e)),
        }
    }

    /// Whether `bucket` exists (HeadBucket): `Ok(false)` only when S3 says
    /// it does not; a denied or failed request is an error.
    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool, AwsError> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = err("HeadBucket", uri(bucket, ""), e);
                if e.kind == ErrorKind::NotFound {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn put_bytes(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), AwsError> {
        let upload = self.upload_config(bytes.len() as u64);
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .customize()
            .config_override(upload)
            .send()
            .await
            .map_err(|e| err("PutObject", uri(bucket, key), e))?;
        Ok(())
    }

    /// Uploads a file: one PutObject up to [`MULTIPART_THRESHOLD`], else a
    /// multipart upload of [`PART_SIZE`] parts (aborted if a part fails, so no
    /// orphan parts are billed).
    pub async fn put_file(&self, bucket: &str, key: &str, path: &Path) -> Result<(), AwsError> {
        let resource = uri(bucket, key);
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| {
                io_error(
                    "PutObject",
                    resource.clone(),
                    format!("{}: {e}", path.display()),
                )
            })?
            .len();
        if size > MAX_OBJECT {
            return Err(io_error(
                "CreateMultipartUpload",
                resource,
                format!(
                    "{}: {size} bytes, over S3's largest object (5 TiB)",
                    path.display()
                ),
            ));
        }
        if size <= MULTIPART_THRESHOLD {
            let body = ByteStream::from_path(path).await.map_err(|e| {
                io_error(
                    "PutObject",
                    resource.clone(),
                    format!("{}: {e}", path.display()),
                )
            })?;
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body)
                .customize()
                .config_override(self.upload_config(size))
                .send()
                .await
                .map_err(|e| err("PutObject", resource, e))?;
            return Ok(());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err("CreateMultipartUpload", resource.clone(), e))?;
        let upload_id = upload.upload_id.ok_or_else(|| {
            io_error(
                "CreateMultipartUpload",
                resource.clone(),
                "no upload id in the answer".into(),
            )
        })?;
        let mut open = OpenUpload {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: Some(upload_id.clone()),
        };
        let done = match self.put_parts(bucket, key, path, size, &upload_id).await {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| err("CompleteMultipartUpload", resource, e)),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => open.upload_id = None,
            Err(_) => open.abort().await,
        }
        done
    }

    async fn put_parts(
        &self,
        bucket: &str,
        key: &str,
        path: &Path,
        size: u64,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>, AwsError> {
        let resource = uri(bucket, key);
        let part = part_size(size);
        let count = size.div_ceil(part);
        let parts = (0..count).map(|i| {
            let resource = resource.clone();
            async move {
                let offset = i * part;
                let length = part.min(size - offset);
                let number = i32::try_from(i + 1).expect("at most 10,000 parts");
                // Read from the file per attempt, not into memory: a retry re-reads.
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(Length::Exact(length))
                    .build()
                    .await
                    .map_err(|e| {
                        io_error(
                            "UploadPart",
                            resource.clone(),
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(body)
                    .customize()
                    .config_override(self.upload_config(length))
                    .send()
                    .await
                    .map_err(|e| err("UploadPart", resource, e))?;
                Ok::<_, AwsError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag)
                        .build(),
                )
            }
        });
        // `buffered` keeps the parts in order, as CompleteMultipartUpload wants.
        futures_util::stream::iter(parts)
            .buffered(CONCURRENT_PARTS)
            .try_collect()
            .await
    }

    pub async fn get_bytes(&self, bucket: &str, key: &str) -> Result<Vec<u8>, AwsError> {
        let mut object = self.open(bucket, key).await?;
        let mut bytes = Vec::with_capacity(object.size.map_or(0, |n| n.min(1 << 30) as usize));
        object
            .body
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| body_error(bucket, key, &e))?;
        Ok(bytes)
    }

    /// Reads an object whole if it is at most `limit` bytes (see
    /// [`ObjectReader::read_at_most`]): for objects a user names, which
    /// may be of any size.
    pub async fn get_bytes_at_most(
        &self,
        bucket: &str,
        key: &str,
        limit: u64,
    ) -> Result<Limited, AwsError> {
        let object = self.open(bucket, key).await?;
        object
            .read_at_most(limit)
            .await
            .map_err(|e| body_error(bucket, key, &e))
    }

    /// Starts reading an object: its size as the server declares it (so that a
    /// caller with a limit can refuse it before reading), and its bytes.
    pub async fn open(&self, bucket: &str, key: &str) -> Result<ObjectReader, AwsError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err("GetObject", uri(bucket, key), e))?;
        Ok(ObjectReader {
            size: out.content_length.and_then(|n| u64::try_from(n).ok()),
            body: Box::pin(out.body.into_async_read()),
        })
    }

    /// Downloads an object to a file, streaming (no whole copy in memory).
    /// Returns the number of bytes written.
    pub async fn download_to(&self, bucket: &str, key: &str, path: &Path) -> Result<u64, AwsError> {
        let resource = uri(bucket, key);
        let mut body = self.open(bucket, key).await?.body;
        let mut file = tokio::fs::File::create(path).await.map_err(|e| {
            io_error(
                "GetObject",
                resource.clone(),
                format!("{}: {e}", path.display()),
            )
        })?;
        let n = tokio::io::copy(&mut body, &mut file).await.map_err(|e| {
            io_error(
                "GetObject",
                resource.clone(),
                format!("writing {}: {e}", path.display()),
            )
        })?;
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(|e| {
                io_error(
                    "GetObject",
                    resource,
                    format!("writing {}: {e}", path.display()),
                )
            })?;
        Ok(n)
    }

    /// A URL that lets anyone GET the object until `expiry` (at most 7 days):
    /// https on AWS. Computed locally: no request is made.
    pub async fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        expiry: Duration,
    ) -> Result<String, AwsError> {
        let resource = uri(bucket, key);
        let config = PresigningConfig::expires_in(expiry)
            .map_err(|e| io_error("GetObject(presign)", resource.clone(), e.to_string()))?;
        let request = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| err("GetObject(presign)", resource, e))?;
        Ok(request.uri().to_string())
    }

    /// The keys under `prefix`, in the server's (lexical) order, every page.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, AwsError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| err("ListObjectsV2", uri(bucket, prefix), e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    /// Deletes `bucket`, which must be empty.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), AwsError> {
        self.client
            .delete_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| err("DeleteBucket", uri(bucket, ""), e))?;
        Ok(())
    }

    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), AwsError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err("DeleteObject", uri(bucket, key), e))?;
        Ok(())
    }
}

/// A GetObject whose body broke off while being read.
fn body_error(bucket: &str, key: &str, e: &std::io::Error) -> AwsError {
    AwsError::new(
        SERVICE,
        "GetObject",
        uri(bucket, key),
        ErrorKind::Transient,
        format!("reading the body: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::task::{Context, Poll};

    /// A body that must not be read.
    struct Untouchable;

    impl tokio::io::AsyncRead for Untouchable {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            panic!("the body was read")
        }
    }

    impl AsyncBufRead for Untouchable {
        fn poll_fill_buf(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<&[u8]>> {
            panic!("the body was read")
        }
        fn consume(self: Pin<&mut Self>, _: usize) {}
    }

    /// A body of `len` bytes handed over in chunks of `chunk`, as a
    /// network body would be.
    fn body(len: usize, chunk: usize, size: Option<u64>) -> ObjectReader {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        ObjectReader {
            size,
            body: Box::pin(tokio::io::BufReader::with_capacity(
                chunk,
                std::io::Cursor::new(data),
            )),
        }
    }

    #[tokio::test]
    async fn reads_at_most_the_limit_whatever_the_declared_size() {
        let limit = 10_000;
        // Declared over the limit: refused unread.
        let declared = ObjectReader {
            size: Some(limit + 1),
            body: Box::pin(Untouchable),
        };
        assert_eq!(
            declared.read_at_most(limit).await.unwrap(),
            Limited::TooLarge {
                size: limit + 1,
                declared: true
            }
        );
        // At the limit, declared or not: read whole, within the limit.
        for size in [Some(limit), None] {
            let Limited::Bytes(bytes) = body(limit as usize, 3000, size)
                .read_at_most(limit)
                .await
                .unwrap()
            else {
                panic!("{size:?}: refused at the limit");
            };
            assert_eq!(bytes.len(), limit as usize);
            assert!(bytes.capacity() <= limit as usize, "{}", bytes.capacity());
            assert_eq!(bytes[7777], (7777 % 251) as u8);
        }
        // Longer than declared (a lying Content-Length), or undeclared:
        // stopped one byte past the limit.
        for size in [Some(10), Some(limit), None] {
            assert_eq!(
                body(50_000, 3000, size).read_at_most(limit).await.unwrap(),
                Limited::TooLarge {
                    size: limit + 1,
                    declared: false
                },
                "{size:?}"
            );
        }
        assert_eq!(
            body(0, 10, Some(0)).read_at_most(0).await.unwrap(),
            Limited::Bytes(vec![])
        );
    }

    #[test]
    fn s3_uris_parse_with_clear_errors() {
        assert_eq!(
            S3Uri::parse("s3://b/dir/k.png").unwrap(),
            S3Uri {
                bucket: "b".into(),
                key: "dir/k.png".into()
            }
        );
        assert_eq!(S3Uri::parse("s3://b").unwrap().key, "");
        assert!(!S3Uri::parse("s3://b/k").unwrap().has_valid_bucket_name());
        assert!(
            !S3Uri::parse("s3://My_Bucket/k")
                .unwrap()
                .has_valid_bucket_name()
        );
        assert!(
            S3Uri::parse("s3://my-bucket.v2")
                .unwrap()
                .has_valid_bucket_name()
        );
        assert_eq!(S3Uri::parse("s3://b/").unwrap().key, "");
        assert_eq!(
            S3Uri::parse("https://b/k"),
            Err(S3UriError::NotS3("https://b/k".into()))
        );
        assert_eq!(
            S3Uri::parse("s3:///k"),
            Err(S3UriError::NoBucket("s3:///k".into()))
        );
        assert_eq!(
            S3Uri::object("s3://b/"),
            Err(S3UriError::NoKey("s3://b/".into()))
        );
        assert_eq!(
            S3Uri::object("s3://b/dir/"),
            Err(S3UriError::NoKey("s3://b/dir/".into()))
        );
        assert_eq!(S3Uri::object("s3://b/k").unwrap().to_string(), "s3://b/k");
        let e = S3Uri::object("s3://b").unwrap_err().to_string();
        assert!(e.contains("s3://BUCKET/KEY"), "{e}");
    }

    #[test]
    fn a_file_of_any_size_fits_in_s3s_10000_parts() {
        let gib = 1u64 << 30;
        assert_eq!(part_size(20 << 20), PART_SIZE);
        assert_eq!(part_size(78 * gib), PART_SIZE);
        for size in [79 * gib, 500 * gib, MAX_OBJECT] {
            let part = part_size(size);
            assert!(size.div_ceil(part) <= MAX_PARTS, "{size}: {part}");
            assert_eq!(part % (1 << 20), 0);
        }
        // S3's largest part is 5 GiB.
        assert!(part_size(MAX_OBJECT) <= 5 * gib);
    }
}
