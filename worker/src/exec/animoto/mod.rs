//! The Animoto task: fetch a list of images, make a slideshow video of them
//! (one image every `seconds_per_image`, letterboxed to the resolution) with
//! ffmpeg, and leave it where the task says.
//!
//! ```text
//! URLs ──fetch (≤ N at once, checked images)──▶ scratch dir ──measured──▶ ffmpeg ──▶ <out>/<batch>-<id>.mp4
//! ```
//! One filter graph over every image is fastest, but ffmpeg then holds every
//! image decoded at once: the images' pixels are counted from their headers
//! first, each is capped, and a task over [`AnimotoConfig::graph_pixels`] has
//! each image fitted to the frame alone before the video is made from those
//! one at a time (see [`encode::Staging`]).
//! The scratch directory is a `TempDir`: removed on success, failure, timeout,
//! and when the task is abandoned (its future dropped, ffmpeg's group killed).

mod address;
mod encode;
mod fetch;
mod magic;
mod orientation;
mod s3;

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudkon_core::{AnimotoSpec, Task, TaskSpec};

pub use address::{AddressClass, AddressPolicy, Refused, classify};
pub use encode::{Culprit, EncodeError, EncodePlan, Staging};
pub use fetch::{FetchError, FetchLimits};
pub use magic::ImageKind;
pub use orientation::Orientation;
pub use s3::{
    DEFAULT_PRESIGN_EXPIRY, MAX_PRESIGN_EXPIRY, OutputError, S3ObjectStore, S3StoreError,
    check_output, parse_presign_expiry,
};

use super::{ExecFuture, ExecLimits, ExecOutput, Executor};
use fetch::{Fetcher, HttpClient, error_chain};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// Where `s3://` images come from and where `s3://` videos go. The S3 backend
/// implements it; without one, `s3://` inputs and outputs fail their task clearly.
pub trait ObjectStore: Send + Sync {
    /// Downloads the object `url` (`s3://bucket/key`) to the file `dest`,
    /// failing if it is larger than `max_bytes`.
    fn get<'a>(&'a self, url: &'a str, dest: &'a Path, max_bytes: u64) -> StoreFuture<'a, ()>;

    /// Uploads the file `file` as the object `url` (`s3://bucket/key`).
    fn put<'a>(&'a self, file: &'a Path, url: &'a str) -> StoreFuture<'a, StoredObject>;
}

/// An object an [`ObjectStore`] holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// `s3://bucket/key`.
    pub uri: String,
    /// A URL that fetches it without credentials (presigned), if the store makes one.
    pub url: Option<String>,
}

/// Where a task's video went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Video {
    /// Its absolute path, or its `s3://` URI.
    pub artifact: String,
    /// A credential-free URL of a video in an object store.
    pub url: Option<String>,
}

/// The executor's settings; a task's own options win where it has them.
#[derive(Clone, Debug)]
pub struct AnimotoConfig {
    /// Where videos go when a task names no output: a local directory, or
    /// `s3://bucket/prefix` (which needs an object store).
    pub output: String,
    /// Where scratch directories are made [default: the system's temp dir].
    pub work_dir: Option<PathBuf>,
    /// The ffmpeg program (a name on PATH or a path).
    pub ffmpeg: PathBuf,
    pub fetch: FetchLimits,
    /// Images one task may have (ffmpeg holds about 7 MiB per 1080p image).
    pub max_images: usize,
    /// Pixels one image may have (width × height, from its header)
    /// [default: 50 million]: more is refused as a likely decompression bomb
    /// (a small file that decodes to gigabytes).
    pub max_image_pixels: u64,
    /// Pixels of a task's images up to which one filter graph makes its
    /// video [default: 300 million]: ffmpeg holds every image decoded at once
    /// there, about 3.5 bytes a pixel (40 JPEGs of 4000x3000, 480 million
    /// pixels, took 1.75 GB), so the default bounds it at about 1 GB. Above,
    /// each image is fitted alone first (about 130 MB for the same 40).
    pub graph_pixels: u64,
    /// Frame rate when a task names none. 5 fps: the picture changes once per
    /// `seconds_per_image`, so more frames only cost encoding time (25 fps took
    /// 2.3x as long as 5 fps for 60 images at 1080p), while very low rates
    /// (1 fps and below) are mishandled by some players; 5 divides every whole
    /// second, so durations stay exact.
    pub frame_rate: u32,
    /// ffmpeg's time limit per video, at the least: a long video gets the
    /// time a slow machine takes to encode it (see
    /// [`EncodePlan::slow_encode_time`]). A task's own timeout also applies.
    pub encode_timeout: Duration,
    /// Where `http(s)://` images may come from (default: public addresses
    /// only, as a worker shared by tenants needs; `cloudkon run` allows all).
    pub addresses: AddressPolicy,
}

impl Default for AnimotoConfig {
    fn default() -> Self {
        Self {
            output: "animoto-out".into(),
            work_dir: None,
            ffmpeg: PathBuf::from("ffmpeg"),
            fetch: FetchLimits {
                concurrency: 8,
                timeout: Duration::from_secs(30),
                max_bytes: 50 << 20,
                task_bytes: None,
                retries: 3,
                retry_delay: Duration::from_millis(250),
            },
            max_images: 500,
            max_image_pixels: 50_000_000,
            graph_pixels: 300_000_000,
            frame_rate: 5,
            encode_timeout: Duration::from_secs(600),
            addresses: AddressPolicy::public_only(),
        }
    }
}

pub const DEFAULT_WIDTH: u32 = 1920;
pub const DEFAULT_HEIGHT: u32 = 1080;

#[derive(Debug, thiserror::Error)]
pub enum AnimotoError {
    #[error("animoto needs at least one image URL")]
    NoImages,
    #[error("{count} images is more than this worker's limit of {limit} per task")]
    TooManyImages { count: usize, limit: usize },
    #[error(
        "resolution must be WIDTHxHEIGHT with even numbers up to {max}, e.g. 1920x1080, got `{0}`",
        max = cloudkon_core::workload::MAX_RESOLUTION_SIDE
    )]
    BadResolution(String),
    #[error("seconds_per_image and frame_rate must be at least 1")]
    ZeroRate,
    #[error("{0}")]
    NoFfmpeg(String),
    #[error("output: {0}")]
    BadOutput(#[from] OutputError),
    #[error("output {0}: s3:// needs the S3 backend (this worker has no object store configured)")]
    NeedsS3Output(String),
    #[error("cannot create the output directory {}: {source}", path.display())]
    OutputDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a scratch directory: {0}")]
    Scratch(#[source] io::Error),
    #[error("image {0}")]
    Fetch(#[from] FetchError),
    #[error(
        "image {number} ({url}): cannot read its width and height from its {format} header (cut short or corrupt)"
    )]
    NoDimensions {
        number: usize,
        url: String,
        format: &'static str,
    },
    #[error(
        "image {number} ({url}): a JPEG cut short (no end-of-image marker); ffmpeg would fill the rest grey"
    )]
    CutShort { number: usize, url: String },
    #[error(
        "image {number} ({url}): {width}x{height} is {} megapixels, more than this worker's limit of {} per image (a decompression bomb?)",
        megapixels(u64::from(*.width) * u64::from(*.height)),
        megapixels(*.limit)
    )]
    ImageTooLarge {
        number: usize,
        url: String,
        width: u32,
        height: u32,
        limit: u64,
    },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("cannot move the video to {}: {source}", path.display())]
    Persist {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot upload the video to {url}: {reason}")]
    Upload { url: String, reason: String },
}

/// Makes Animoto videos. Cheap to share: one per worker.
pub struct AnimotoExecutor {
    config: AnimotoConfig,
    http: HttpClient,
    store: Option<Arc<dyn ObjectStore>>,
    /// Set once ffmpeg has passed [`check_ffmpeg`]; a failed check is tried
    /// again by the next task (ffmpeg may have been installed since).
    ffmpeg_ok: tokio::sync::OnceCell<()>,
}

impl AnimotoExecutor {
    pub fn new(config: AnimotoConfig) -> Self {
        Self {
            http: HttpClient::new(config.addresses.clone()),
            config,
            store: None,
            ffmpeg_ok: tokio::sync::OnceCell::new(),
        }
    }

    /// Plugs in the object store that serves `s3://` inputs and outputs.
    pub fn with_object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    pub fn config(&self) -> &AnimotoConfig {
        &self.config
    }

    /// Makes the task's video; returns where it is.
    pub async fn make_video(&self, task: &Task, spec: &AnimotoSpec) -> Result<Video, AnimotoError> {
        let plan = self.plan(spec)?;
        let output = spec
            .output
            .clone()
            .unwrap_or_else(|| self.config.output.clone());
        // A typo (`S3://b`, `s3://`) fails now, not after every download.
        check_output(&output)?;
        self.ffmpeg_ready().await?;
        let file_name = video_name(task);
        let remote = output.starts_with("s3://");
        if remote && self.store.is_none() {
            return Err(AnimotoError::NeedsS3Output(output));
        }
        // Locally, the video is written next to its final name and renamed at the
        // end, so that a failed or killed encode never leaves a partial video.
        let out_dir = if remote {
            None
        } else {
            let dir = std::path::absolute(&output)
                .and_then(|d| std::fs::create_dir_all(&d).map(|()| d))
                .map_err(|source| AnimotoError::OutputDir {
                    path: PathBuf::from(&output),
                    source,
                })?;
            Some(dir)
        };

        let scratch = match &self.config.work_dir {
            Some(dir) => tempfile::Builder::new()
                .prefix("cloudkon-animoto-")
                .tempdir_in(dir),
            None => tempfile::Builder::new()
                .prefix("cloudkon-animoto-")
                .tempdir(),
        }
        .map_err(AnimotoError::Scratch)?;

        let started = Instant::now();
        let fetcher = Fetcher {
            http: &self.http,
            store: self.store.as_deref(),
            limits: &self.config.fetch,
            dir: scratch.path(),
        };
        let images = fetcher.fetch_all(&spec.urls).await?;
        let fetched_in = started.elapsed();
        let (kinds, names): (Vec<ImageKind>, Vec<String>) =
            images.into_iter().map(|f| (f.kind, f.name)).unzip();
        let (pixels, orientations) = self.measure(scratch.path(), &kinds, &names, &spec.urls)?;
        let staging = if pixels > self.config.graph_pixels {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            Staging::Fitted {
                concurrency: cpus.min(4),
            }
        } else {
            Staging::Graph
        };

        let encode = |target: PathBuf| {
            let names = &names;
            let orientations = &orientations;
            let urls = &spec.urls;
            let scratch = scratch.path();
            async move {
                encode::encode(
                    &self.config.ffmpeg,
                    &plan,
                    scratch,
                    encode::Images {
                        names,
                        orientations,
                        urls,
                    },
                    &target,
                    self.config
                        .encode_timeout
                        .max(plan.slow_encode_time(names.len())),
                    staging,
                )
                .await
            }
        };
        let video = match out_dir {
            Some(dir) => {
                let partial = tempfile::Builder::new()
                    .prefix(&format!(".{file_name}."))
                    .suffix(".partial")
                    // A video is for sharing: not the temp file's private 0600.
                    .permissions(std::fs::Permissions::from_mode(0o644))
                    .tempfile_in(&dir)
                    .map_err(|source| AnimotoError::OutputDir {
                        path: dir.clone(),
                        source,
                    })?;
                encode(partial.path().to_path_buf()).await?;
                let path = dir.join(&file_name);
                partial.persist(&path).map_err(|e| AnimotoError::Persist {
                    path: path.clone(),
                    source: e.error,
                })?;
                Video {
                    artifact: path.to_string_lossy().into_owned(),
                    url: None,
                }
            }
            None => {
                let video = scratch.path().join(&file_name);
                encode(video.clone()).await?;
                let url = format!("{}/{file_name}", output.trim_end_matches('/'));
                let store = self.store.as_deref().expect("checked above");
                let stored = store
                    .put(&video, &url)
                    .await
                    .map_err(|e| AnimotoError::Upload {
                        url: url.clone(),
                        reason: error_chain(e.as_ref()),
                    })?;
                Video {
                    artifact: stored.uri,
                    url: stored.url,
                }
            }
        };
        tracing::info!(
            batch = %task.batch,
            id = task.id,
            images = names.len(),
            fetch_ms = fetched_in.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            artifact = video.artifact,
            "animoto video made"
        );
        Ok(video)
    }

    /// Fails the task at once, before any download, when ffmpeg cannot run.
    async fn ffmpeg_ready(&self) -> Result<(), AnimotoError> {
        self.ffmpeg_ok
            .get_or_try_init(|| async {
                let ffmpeg = self.config.ffmpeg.clone();
                tokio::task::spawn_blocking(move || check_ffmpeg(&ffmpeg))
                    .await
                    .map_err(|e| format!("cannot check ffmpeg: {e}"))?
            })
            .await
            .map(|_| ())
            .map_err(AnimotoError::NoFfmpeg)
    }

    /// Refuses an image whose decoded size ffmpeg should not hold (the limit
    /// per image); returns the pixels of all, and which way up each goes.
    /// Reads only headers (a few KiB each; a JPEG's segments are skipped,
    /// not read), EXIF data and a JPEG's last two bytes (all from its first
    /// scan on when they are not its end marker: [`magic::jpeg_is_whole`]).
    fn measure(
        &self,
        dir: &Path,
        kinds: &[ImageKind],
        names: &[String],
        urls: &[String],
    ) -> Result<(u64, Vec<Orientation>), AnimotoError> {
        let mut total = 0u64;
        let mut orientations = Vec::with_capacity(names.len());
        for (i, ((kind, name), url)) in kinds.iter().zip(names).zip(urls).enumerate() {
            let (number, url) = (i + 1, url.clone());
            let path = dir.join(name);
            let unreadable = |source| {
                AnimotoError::Fetch(FetchError::LocalFile {
                    url: url.clone(),
                    source,
                })
            };
            let size = std::fs::File::open(&path)
                .and_then(|f| magic::dimensions(*kind, f))
                .map_err(unreadable)?;
            let Some((width, height)) = size else {
                return Err(AnimotoError::NoDimensions {
                    number,
                    url,
                    format: kind.name(),
                });
            };
            let whole = *kind != ImageKind::Jpeg
                || std::fs::File::open(&path)
                    .and_then(magic::jpeg_is_whole)
                    .map_err(unreadable)?;
            if !whole {
                return Err(AnimotoError::CutShort { number, url });
            }
            let pixels = u64::from(width) * u64::from(height);
            if pixels > self.config.max_image_pixels {
                return Err(AnimotoError::ImageTooLarge {
                    number,
                    url,
                    width,
                    height,
                    limit: self.config.max_image_pixels,
                });
            }
            total += pixels;
            orientations.push(
                std::fs::File::open(&path)
                    .map_or(Orientation::UPRIGHT, |f| Orientation::of(*kind, f)),
            );
        }
        Ok((total, orientations))
    }

    fn plan(&self, spec: &AnimotoSpec) -> Result<EncodePlan, AnimotoError> {
        if spec.urls.is_empty() {
            return Err(AnimotoError::NoImages);
        }
        if spec.urls.len() > self.config.max_images {
            return Err(AnimotoError::TooManyImages {
                count: spec.urls.len(),
                limit: self.config.max_images,
            });
        }
        let (width, height) = match &spec.resolution {
            None => (DEFAULT_WIDTH, DEFAULT_HEIGHT),
            Some(text) => cloudkon_core::workload::parse_resolution(text)
                .ok_or_else(|| AnimotoError::BadResolution(text.clone()))?,
        };
        let plan = EncodePlan {
            width,
            height,
            seconds_per_image: spec.seconds_per_image.unwrap_or(1),
            frame_rate: spec.frame_rate.unwrap_or(self.config.frame_rate),
        };
        if plan.seconds_per_image == 0 || plan.frame_rate == 0 {
            return Err(AnimotoError::ZeroRate);
        }
        Ok(plan)
    }
}

impl Executor for AnimotoExecutor {
    fn check(&self) -> Result<(), String> {
        check_ffmpeg(&self.config.ffmpeg)
    }

    fn execute<'a>(&'a self, task: &'a Task, limits: ExecLimits) -> ExecFuture<'a> {
        Box::pin(async move {
            let TaskSpec::Animoto(spec) = &task.spec else {
                return ExecOutput::failed(format!(
                    "the animoto executor got a {} task",
                    task.spec.kind()
                ));
            };
            let made = match limits.timeout {
                Some(limit) => match tokio::time::timeout(limit, self.make_video(task, spec)).await
                {
                    Ok(made) => made,
                    // Dropping the future killed ffmpeg and removed the scratch dir.
                    Err(_elapsed) => return ExecOutput::timed_out(),
                },
                None => self.make_video(task, spec).await,
            };
            match made {
                Ok(video) => {
                    let mut out = ExecOutput::succeeded();
                    out.artifact = Some(video.artifact);
                    out.artifact_url = video.url;
                    out
                }
                Err(e) => {
                    tracing::debug!(batch = %task.batch, id = task.id, error = %e, "animoto task failed");
                    ExecOutput::failed(e.to_string())
                }
            }
        })
    }
}

/// Checks that `ffmpeg` runs and has the H.264 encoder, once at start-up.
pub fn check_ffmpeg(ffmpeg: &Path) -> Result<(), String> {
    let output = std::process::Command::new(ffmpeg)
        .args(["-hide_banner", "-encoders"])
        .stdin(std::process::Stdio::null())
        .output();
    let shown = ffmpeg.display();
    match output {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "ffmpeg not found on PATH (looked for `{shown}`): install it (apt-get install ffmpeg) to run animoto tasks"
        )),
        Err(e) => Err(format!("cannot run ffmpeg `{shown}`: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "ffmpeg `{shown}` does not run ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) if !String::from_utf8_lossy(&out.stdout).contains("libx264") => Err(format!(
            "ffmpeg `{shown}` has no libx264 encoder: install a full build (apt-get install ffmpeg)"
        )),
        Ok(_) => Ok(()),
    }
}

/// `12.3`: pixels in millions, for messages (a limit shows as `50`, not `50.0`).
fn megapixels(pixels: u64) -> String {
    let text = format!("{:.1}", pixels as f64 / 1e6);
    text.strip_suffix(".0").map_or(text.clone(), str::to_string)
}

/// `<batch>-<id>.mp4`, unique per task. A batch name (free-form) with
/// characters that do not belong in a file name, or too long for one, gives
/// `<start>~<hash>-<id>.mp4`: those characters become `_` in the start, and
/// the SHA-256 of the whole name (16 hex) keeps `a/b` and `a_b` apart (no
/// plain name holds a `~`).
fn video_name(task: &Task) -> String {
    let name = task.batch.as_str();
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.len() <= MAX_PLAIN_BATCH && !name.starts_with('.') && name.chars().all(safe) {
        return format!("{name}-{}.mp4", task.id);
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let start: String = name
        .trim_start_matches('.')
        .chars()
        .map(|c| if safe(c) { c } else { '_' })
        .take(MAX_PLAIN_BATCH / 2)
        .collect();
    format!("{start}~{hash}-{}.mp4", task.id)
}

/// The longest batch name used as it is in a video's name: file names end
/// at 255 bytes, and the task's number and `.mp4` follow.
const MAX_PLAIN_BATCH: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkon_core::BatchId;

    fn task(batch: &str, id: u64) -> Task {
        Task {
            batch: BatchId::new(batch),
            id,
            attempt: 1,
            timeout: None,
            spec: TaskSpec::Sleep { ms: 0 },
        }
    }

    #[test]
    fn video_names_are_unique_per_task_and_safe() {
        assert_eq!(video_name(&task("mixed-17", 3)), "mixed-17-3.mp4");
        let odd = video_name(&task("../a b/c", 0));
        assert!(
            odd.starts_with("_a_b_c~") && odd.ends_with("-0.mp4"),
            "{odd}"
        );
        assert_ne!(video_name(&task("a/b", 1)), video_name(&task("a_b", 1)));
        assert_eq!(video_name(&task("a_b", 1)), "a_b-1.mp4");
        assert_ne!(video_name(&task(".a", 1)), video_name(&task("a", 1)));
        let long = video_name(&task(&"x".repeat(300), 7));
        assert!(long.len() < 255 && long.ends_with("-7.mp4"), "{long}");
        assert_ne!(long, video_name(&task(&"x".repeat(301), 7)));
    }

    #[test]
    fn megapixels_are_shown_to_a_tenth() {
        assert_eq!(megapixels(50_000_000), "50");
        assert_eq!(megapixels(256_000_000), "256");
        assert_eq!(megapixels(307_200), "0.3");
        assert_eq!(megapixels(1_234_567_890), "1234.6");
    }

    #[test]
    fn plan_applies_defaults_and_limits() {
        let executor = AnimotoExecutor::new(AnimotoConfig {
            max_images: 2,
            ..AnimotoConfig::default()
        });
        let spec = |n: usize| AnimotoSpec {
            urls: vec!["file:///x.png".into(); n],
            seconds_per_image: None,
            resolution: None,
            frame_rate: None,
            output: None,
        };
        assert_eq!(
            executor.plan(&spec(1)).unwrap(),
            EncodePlan {
                width: 1920,
                height: 1080,
                seconds_per_image: 1,
                frame_rate: 5
            }
        );
        assert_eq!(
            executor.plan(&spec(3)).unwrap_err().to_string(),
            "3 images is more than this worker's limit of 2 per task"
        );
        assert_eq!(
            executor.plan(&spec(0)).unwrap_err().to_string(),
            "animoto needs at least one image URL"
        );
        // The workload's rule (core's), for a task that came another way.
        let wide = AnimotoSpec {
            resolution: Some("8194x720".into()),
            ..spec(1)
        };
        assert_eq!(
            executor.plan(&wide).unwrap_err().to_string(),
            "resolution must be WIDTHxHEIGHT with even numbers up to 8192, e.g. 1920x1080, got `8194x720`"
        );
    }

    #[test]
    fn a_missing_ffmpeg_is_one_clear_message() {
        let err = check_ffmpeg(Path::new("/nonexistent/ffmpeg")).unwrap_err();
        assert!(
            err.starts_with("ffmpeg not found on PATH (looked for `/nonexistent/ffmpeg`): install it (apt-get install ffmpeg)"),
            "{err}"
        );
    }
}
