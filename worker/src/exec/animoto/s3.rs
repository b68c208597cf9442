//! The Animoto executor's [`ObjectStore`] on S3: `s3://` images are downloaded
//! under the size cap, videos are uploaded (multipart when large) and handed
//! back with a presigned HTTPS GET URL, so that whoever reads the results can
//! fetch a video without AWS credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudkon_core::aws::{
    Aws, AwsError, ErrorKind, S3Store, S3Uri, S3UriError, VideoPlaceError, check_video_place,
};
use tokio::io::AsyncReadExt as _;
use tokio::sync::OnceCell;

use super::{ObjectStore, StoreFuture, StoredObject};

/// How long presigned URLs work by default: 7 days, the most S3 allows.
pub const DEFAULT_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest expiry S3 accepts for a presigned URL (SigV4).
pub const MAX_PRESIGN_EXPIRY: Duration = DEFAULT_PRESIGN_EXPIRY;

/// Parses a presigned URL expiry (`7d`, `12h`, `3600s`): at least a second, at
/// most 7 days. For `--presign-expiry` flags.
pub fn parse_presign_expiry(text: &str) -> Result<Duration, String> {
    let expiry = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if expiry < Duration::from_secs(1) {
        return Err("a presigned URL must work for at least 1s".into());
    }
    if expiry > MAX_PRESIGN_EXPIRY {
        return Err(format!(
            "S3 presigned URLs last at most 7 days ({}s), got {}s",
            MAX_PRESIGN_EXPIRY.as_secs(),
            expiry.as_secs()
        ));
    }
    Ok(expiry)
}

/// An output location that is neither a directory nor an S3 URI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error(transparent)]
    Place(#[from] VideoPlaceError),
    #[error("`{0}` is a file, not a directory for videos")]
    NotADirectory(String),
}

/// Checks an output location (at start-up, and each task's before its
/// downloads): written as a place for videos ([`check_video_place`]), and
/// not a file where a directory would be made.
pub fn check_output(output: &str) -> Result<(), OutputError> {
    check_video_place(output)?;
    if !output.starts_with("s3://") && std::fs::metadata(output).is_ok_and(|m| !m.is_dir()) {
        return Err(OutputError::NotADirectory(output.to_string()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum S3StoreError {
    #[error(transparent)]
    Uri(#[from] S3UriError),
    #[error("no such object")]
    NoSuchObject,
    #[error("no such bucket `{0}`")]
    NoSuchBucket(String),
    #[error("{size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("S3 {operation}: {message}")]
    Aws {
        operation: &'static str,
        message: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl S3StoreError {
    /// The resource is already in the task's message; say what went wrong.
    fn from_aws(bucket: &str, e: AwsError) -> Self {
        match (e.kind, e.code.as_deref()) {
            (ErrorKind::NotFound, Some("NoSuchBucket")) => Self::NoSuchBucket(bucket.to_string()),
            (ErrorKind::NotFound, _) => Self::NoSuchObject,
            _ => Self::Aws {
                operation: e.operation,
                message: e.message,
            },
        }
    }
}

/// `s3://` inputs and outputs of Animoto tasks. The S3 client is made on first
/// use (see [`S3ObjectStore::lazy`]), so that runs that never touch S3 need no
/// AWS configuration.
pub struct S3ObjectStore {
    s3: OnceCell<S3Store>,
    presign_expiry: Duration,
}

impl S3ObjectStore {
    pub fn new(s3: S3Store, presign_expiry: Duration) -> Self {
        Self {
            s3: OnceCell::new_with(Some(s3)),
            presign_expiry,
        }
    }

    /// Loads the AWS configuration (the standard chain) the first time an
    /// `s3://` URL comes.
    pub fn lazy(presign_expiry: Duration) -> Self {
        Self {
            s3: OnceCell::new(),
            presign_expiry,
        }
    }

    async fn s3(&self) -> &S3Store {
        self.s3
            .get_or_init(|| async {
                tracing::debug!("loading the AWS configuration for s3:// URLs");
                Aws::load().await.s3()
            })
            .await
    }

    /// Downloads `url` to `dest`, refusing it before reading when S3 declares
    /// it too large, and while reading otherwise.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<u64, S3StoreError> {
        let object = S3Uri::object(url)?;
        let reader = self
            .s3()
            .await
            .open(&object.bucket, &object.key)
            .await
            .map_err(|e| S3StoreError::from_aws(&object.bucket, e))?;
        if let Some(size) = reader.size.filter(|&n| n > max_bytes) {
            return Err(S3StoreError::TooLarge {
                size,
                limit: max_bytes,
            });
        }
        let write = |source| S3StoreError::Write {
            path: dest.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(write)?;
        // One byte past the limit is enough to know it is too large.
        let mut body = reader.body.take(max_bytes.saturating_add(1));
        let n = tokio::io::copy(&mut body, &mut file)
            .await
            .map_err(|e| S3StoreError::Aws {
                operation: "GetObject",
                message: format!("reading the body: {e}"),
            })?;
        if n > max_bytes {
            return Err(S3StoreError::TooLarge {
                size: n,
                limit: max_bytes,
            });
        }
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(write)?;
        Ok(n)
    }

    /// Uploads `file` as the object `url`; returns it with a presigned GET URL.
    pub async fn upload(&self, file: &Path, url: &str) -> Result<StoredObject, S3StoreError> {
        let object = S3Uri::object(url)?;
        let s3 = self.s3().await;
        s3.put_file(&object.bucket, &object.key, file)
            .await
            .map_err(|e| S3StoreError::from_aws(&object.bucket, e))?;
        let presigned = s3
            .presign_get(&object.bucket, &object.key, self.presign_expiry)
            .await
            .map_err(|e| S3StoreError::from_aws(&object.bucket, e))?;
        Ok(StoredObject {
            uri: object.to_string(),
            url: Some(presigned),
        })
    }
}

impl ObjectStore for S3ObjectStore {
    fn get<'a>(&'a self, url: &'a str, dest: &'a Path, max_bytes: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.download(url, dest, max_bytes).await?;
            Ok(())
        })
    }

    fn put<'a>(&'a self, file: &'a Path, url: &'a str) -> StoreFuture<'a, StoredObject> {
        Box::pin(async move { Ok(self.upload(file, url).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presign_expiry_is_between_a_second_and_seven_days() {
        assert_eq!(parse_presign_expiry("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_presign_expiry("90m"), Ok(Duration::from_secs(5400)));
        let e = parse_presign_expiry("8d").unwrap_err();
        assert!(e.contains("at most 7 days"), "{e}");
        assert!(parse_presign_expiry("0s").is_err());
        assert!(parse_presign_expiry("soon").is_err());
    }

    #[test]
    fn outputs_are_directories_or_s3_uris_with_a_bucket() {
        assert_eq!(check_output("videos/out"), Ok(()));
        assert_eq!(check_output("/srv/videos"), Ok(()));
        assert_eq!(check_output("s3://b/videos"), Ok(()));
        assert!(
            check_output("")
                .unwrap_err()
                .to_string()
                .contains("is not a place for videos")
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        assert_eq!(
            check_output(path).unwrap_err().to_string(),
            format!("`{path}` is a file, not a directory for videos")
        );
        assert_eq!(
            check_output("s3://").unwrap_err().to_string(),
            "`s3://` has no bucket name: expected s3://BUCKET/KEY"
        );
        assert_eq!(
            check_output("S3://b").unwrap_err().to_string(),
            "`S3://b` is not a place for videos: give a local directory or s3://BUCKET/PREFIX (s3:// in lowercase)"
        );
        assert_eq!(
            check_output("https://b/x").unwrap_err().to_string(),
            "`https://b/x` is not a place for videos: give a local directory or s3://BUCKET/PREFIX"
        );
    }

    #[test]
    fn not_found_errors_say_what_is_missing() {
        let aws = |code: &str| AwsError {
            service: "S3",
            operation: "GetObject",
            resource: "s3://b/k".into(),
            code: Some(code.into()),
            kind: ErrorKind::NotFound,
            message: "gone".into(),
        };
        assert_eq!(
            S3StoreError::from_aws("b", aws("NoSuchKey")).to_string(),
            "no such object"
        );
        assert_eq!(
            S3StoreError::from_aws("b", aws("NoSuchBucket")).to_string(),
            "no such bucket `b`"
        );
    }
}
