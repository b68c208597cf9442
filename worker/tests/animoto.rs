//! The Animoto executor end to end: real ffmpeg, real images made by ffmpeg, a
//! real HTTP server on loopback, videos checked with ffprobe.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cloudkon_core::{AnimotoSpec, BatchId, Outcome, Task, TaskSpec};
use cloudkon_worker::exec::animoto::{AddressPolicy, AnimotoConfig, AnimotoExecutor};
use cloudkon_worker::loopback_http::{LoopbackServer, Reply};
use cloudkon_worker::{ExecLimits, ExecOutput, Executor};
use tempfile::TempDir;

/// Test images, made once per test by ffmpeg: mixed formats, sizes and shapes.
struct Images {
    dir: TempDir,
}

const IMAGES: [(&str, &str); 3] = [
    ("wide.jpg", "1920x1080"),
    ("small.png", "640x480"),
    ("portrait.jpg", "480x800"),
];

impl Images {
    fn make() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in IMAGES {
            cloudkon_testkit::make_image(&dir.path().join(name), size);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn file_url(&self, name: &str) -> String {
        format!("file://{}", self.path(name).display())
    }
}

/// Request counters per scripted route.
#[derive(Default)]
struct Hits {
    flaky: AtomicU32,
    missing: AtomicU32,
    forbidden: AtomicU32,
}

/// A server with the test images and every misbehaviour the tests need.
async fn server(images: &Images, hits: Arc<Hits>) -> LoopbackServer {
    let files: Vec<(String, Vec<u8>)> = IMAGES
        .iter()
        .map(|(name, _)| (format!("/{name}"), images.bytes(name)))
        .collect();
    let png = images.bytes("small.png");
    // Its first half: a valid header, the image data cut short.
    let truncated = png[..png.len() / 2].to_vec();
    // Its header claims 10000x10000 (100 megapixels, which ffmpeg would
    // allocate), as a decompression bomb's does (its checksum is now wrong:
    // nothing reads that far).
    let mut bomb = png.clone();
    bomb[16..24].copy_from_slice(&[0, 0, 0x27, 0x10, 0, 0, 0x27, 0x10]);
    LoopbackServer::start(move |path| {
        if let Some((_, body)) = files.iter().find(|(p, _)| p == path) {
            return Reply::ok("image/jpeg", body.clone());
        }
        match path {
            "/missing.jpg" => {
                hits.missing.fetch_add(1, Ordering::SeqCst);
                Reply::status(404)
            }
            "/forbidden.jpg" => {
                hits.forbidden.fetch_add(1, Ordering::SeqCst);
                Reply::status(403)
            }
            // Two 503s, then the image: a transient failure that retries cure.
            "/flaky.png" => match hits.flaky.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Reply::status(503),
                _ => Reply::ok("image/png", png.clone()),
            },
            "/moved.png" => Reply::redirect(302, "/small.png"),
            // Relative to the redirecting URL, as RFC 3986 resolves them.
            "/relative.png" => Reply::redirect(302, "small.png"),
            "/a/b/up.png" => Reply::redirect(301, "../../small.png"),
            "/truncated.png" => Reply::ok("image/png", truncated.clone()),
            "/bomb.png" => Reply::ok("image/png", bomb.clone()),
            "/headless.png" => Reply::ok("image/png", png[..20].to_vec()),
            // A readable size, and a colour type (7) no PNG has: ffmpeg fails.
            "/corrupt.png" => {
                let mut body = png.clone();
                body[25] = 7;
                Reply::ok("image/png", body)
            }
            "/page.jpg" => Reply::ok(
                "text/html",
                b"<!DOCTYPE html><html><body>Not an image</body></html>".to_vec(),
            ),
            // JPEG magic, then garbage: passes the sniffing, has no readable size.
            "/corrupt.jpg" => {
                let mut body = b"\xFF\xD8\xFF\xE0".to_vec();
                body.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
                Reply::ok("image/jpeg", body)
            }
            "/huge.jpg" => {
                let mut body = b"\xFF\xD8\xFF\xE0".to_vec();
                body.resize(3 << 20, 0);
                Reply::ok("image/jpeg", body)
            }
            "/slow.jpg" => Reply::ok("image/jpeg", png.clone()).delayed(Duration::from_secs(60)),
            _ => Reply::status(404),
        }
    })
    .await
    .unwrap()
}

/// An executor whose outputs and scratch directories are in fresh directories.
struct Setup {
    executor: AnimotoExecutor,
    out: TempDir,
    work: TempDir,
}

fn setup(tune: impl FnOnce(&mut AnimotoConfig)) -> Setup {
    let (out, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut config = AnimotoConfig {
        output: out.path().to_string_lossy().into_owned(),
        work_dir: Some(work.path().to_path_buf()),
        // The test servers are on 127.0.0.1, which a worker refuses by default.
        addresses: AddressPolicy::allowing(vec!["127.0.0.1/32".parse().unwrap()]),
        ..AnimotoConfig::default()
    };
    config.fetch.retry_delay = Duration::from_millis(20);
    tune(&mut config);
    Setup {
        executor: AnimotoExecutor::new(config),
        out,
        work,
    }
}

impl Setup {
    /// Everything temporary is gone, and only finished videos are in the output.
    fn assert_clean(&self) {
        let left: Vec<_> = std::fs::read_dir(self.work.path()).unwrap().collect();
        assert!(left.is_empty(), "scratch left behind: {left:?}");
        for entry in std::fs::read_dir(self.out.path()).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(
                !name.to_string_lossy().ends_with(".partial"),
                "partial video left: {name:?}"
            );
        }
    }

    fn outputs(&self) -> usize {
        std::fs::read_dir(self.out.path()).unwrap().count()
    }
}

fn spec(urls: Vec<String>) -> AnimotoSpec {
    AnimotoSpec {
        urls,
        seconds_per_image: None,
        // Small videos keep the suite fast; the default (1080p) has its own test.
        resolution: Some("640x360".into()),
        frame_rate: None,
        output: None,
    }
}

fn task(id: u64, spec: AnimotoSpec) -> Task {
    Task {
        batch: BatchId::new("vids"),
        id,
        attempt: 1,
        timeout: None,
        spec: TaskSpec::Animoto(spec),
    }
}

const LIMITS: ExecLimits = ExecLimits {
    timeout: Some(Duration::from_secs(120)),
    output_bytes: 4096,
};

fn reason(out: &ExecOutput) -> &str {
    match &out.outcome {
        Outcome::Failed { reason } => reason,
        other => panic!("expected a failure, got {other:?} ({out:?})"),
    }
}

/// What ffprobe says of a video (and it decodes every frame to count them).
use cloudkon_testkit::probe;

/// A playable H.264 video of `seconds` (within one frame) at the size and rate.
fn assert_video(path: &Path, seconds: u32, (width, height): (u32, u32), fps: u32) {
    let p = probe(path);
    assert_eq!(
        (p.codec.as_str(), p.pix_fmt.as_str()),
        ("h264", "yuv420p"),
        "{p:?}"
    );
    assert_eq!((p.width, p.height), (width, height), "{p:?}");
    assert!(
        (p.duration - f64::from(seconds)).abs() <= 1.0 / f64::from(fps),
        "duration {} for {seconds} s: {p:?}",
        p.duration
    );
    assert_eq!(p.frames_read, u64::from(seconds * fps), "{p:?}");
}

#[tokio::test]
async fn mixed_http_images_make_a_video_of_the_exact_length() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let s = setup(|_| {});
    let mut spec = spec(vec![
        server.url("wide.jpg"),
        server.url("small.png"),
        server.url("portrait.jpg"),
        server.url("moved.png"),
    ]);
    spec.seconds_per_image = Some(2);
    let out = s.executor.execute(&task(7, spec), LIMITS).await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    let artifact = PathBuf::from(out.artifact.unwrap());
    assert!(artifact.is_absolute());
    assert_eq!(artifact, s.out.path().join("vids-7.mp4"));
    assert_video(&artifact, 8, (640, 360), 5);
    s.assert_clean();
}

#[tokio::test]
async fn file_urls_and_defaults_make_a_1080p_video() {
    let images = Images::make();
    let s = setup(|_| {});
    let mut spec = spec(IMAGES.iter().map(|(n, _)| images.file_url(n)).collect());
    spec.resolution = None;
    spec.frame_rate = Some(2);
    let out = s.executor.execute(&task(1, spec), LIMITS).await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    assert_video(Path::new(&out.artifact.unwrap()), 3, (1920, 1080), 2);
    s.assert_clean();
}

#[tokio::test]
async fn the_task_output_directory_wins_over_the_default() {
    let images = Images::make();
    let s = setup(|_| {});
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("made/here");
    let mut spec = spec(vec![images.file_url("small.png")]);
    spec.output = Some(target.to_string_lossy().into_owned());
    let out = s.executor.execute(&task(2, spec), LIMITS).await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    assert_eq!(
        out.artifact.unwrap(),
        target.join("vids-2.mp4").to_string_lossy()
    );
    assert_eq!(s.outputs(), 0);
}

#[tokio::test]
async fn transient_503s_are_retried_until_the_image_comes() {
    let images = Images::make();
    let hits = Arc::new(Hits::default());
    let server = server(&images, hits.clone()).await;
    let s = setup(|c| c.fetch.retries = 3);
    let out = s
        .executor
        .execute(&task(3, spec(vec![server.url("flaky.png")])), LIMITS)
        .await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    assert_eq!(hits.flaky.load(Ordering::SeqCst), 3);
    s.assert_clean();
}

#[tokio::test]
async fn retries_are_bounded() {
    let images = Images::make();
    let hits = Arc::new(Hits::default());
    let server = server(&images, hits.clone()).await;
    let s = setup(|c| c.fetch.retries = 1);
    let out = s
        .executor
        .execute(&task(3, spec(vec![server.url("flaky.png")])), LIMITS)
        .await;
    let url = server.url("flaky.png");
    assert_eq!(
        reason(&out),
        format!("image {url}: HTTP 503 Service Unavailable")
    );
    assert_eq!(hits.flaky.load(Ordering::SeqCst), 2);
    s.assert_clean();
}

#[tokio::test]
async fn not_found_and_forbidden_fail_without_retries() {
    let images = Images::make();
    let hits = Arc::new(Hits::default());
    let server = server(&images, hits.clone()).await;
    let s = setup(|c| c.fetch.retries = 3);
    for (name, status) in [
        ("missing.jpg", "404 Not Found"),
        ("forbidden.jpg", "403 Forbidden"),
    ] {
        let url = server.url(name);
        let urls = vec![server.url("wide.jpg"), url.clone()];
        let out = s.executor.execute(&task(4, spec(urls)), LIMITS).await;
        assert_eq!(reason(&out), format!("image {url}: HTTP {status}"));
    }
    assert_eq!(hits.missing.load(Ordering::SeqCst), 1);
    assert_eq!(hits.forbidden.load(Ordering::SeqCst), 1);
    assert_eq!(s.outputs(), 0);
    s.assert_clean();
}

#[tokio::test]
async fn a_web_page_is_not_an_image() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let s = setup(|_| {});
    let url = server.url("page.jpg");
    let out = s
        .executor
        .execute(&task(5, spec(vec![url.clone()])), LIMITS)
        .await;
    // The status and the content type, never the body: it may be a private
    // page's, and the reason goes back to whoever submitted the task.
    assert_eq!(
        reason(&out),
        format!(
            "image {url}: not an image (HTTP 200, Content-Type text/html, no known image format in its first bytes)"
        )
    );
    s.assert_clean();
}

#[tokio::test]
async fn a_local_text_file_is_not_an_image() {
    let s = setup(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    std::fs::write(&path, "hello\n").unwrap();
    let url = format!("file://{}", path.display());
    let fails = |url: String| async {
        let out = s.executor.execute(&task(5, spec(vec![url])), LIMITS).await;
        reason(&out).to_string()
    };
    assert_eq!(
        fails(url.clone()).await,
        format!("image {url}: not an image (no known image format in its first bytes)")
    );
    let missing = format!("file://{}/nope.png", dir.path().display());
    let said = fails(missing.clone()).await;
    assert!(
        said.starts_with(&format!("image {missing}: No such file or directory")),
        "{said}"
    );
    // A FIFO no one writes: refused at once, where opening it waited for a
    // writer, holding the slot past a timeout or Ctrl-C.
    let fifo = dir.path().join("pipe.jpg");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let url = format!("file://{}", fifo.display());
    // A writer after 20 s, so that a read that waits for one ends (and the
    // assertion below fails) rather than hangs the test.
    let writer = fifo.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = std::fs::OpenOptions::new().write(true).open(writer);
    });
    assert_eq!(
        fails(url.clone()).await,
        format!("image {url}: not a regular file (a directory, a FIFO or a device)")
    );
    // A photo cut short: ffmpeg only warns, and made a video half grey.
    let images = Images::make();
    let jpeg = images.bytes("wide.jpg");
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() * 3 / 4]).unwrap();
    let url = format!("file://{}", cut.display());
    assert_eq!(
        fails(url.clone()).await,
        format!(
            "image 1 ({url}): a JPEG cut short (no end-of-image marker); ffmpeg would fill the rest grey"
        )
    );
    s.assert_clean();
}

#[tokio::test]
async fn a_corrupt_image_fails_with_ffmpegs_words() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let s = setup(|_| {});
    let corrupt = server.url("corrupt.png");
    let urls = vec![server.url("small.png"), corrupt.clone()];
    let start = Instant::now();
    let out = s.executor.execute(&task(6, spec(urls)), LIMITS).await;
    let failed = reason(&out);
    assert!(
        failed.starts_with("ffmpeg failed (exit status "),
        "{failed}"
    );
    // The image at fault, found by decoding each alone, in ffmpeg's words
    // (the graph's own stderr names no file).
    let named = format!("): image 2 ({corrupt}): ");
    let words = failed.split_once(&named).map(|(_, words)| words);
    assert!(words.is_some_and(|w| !w.is_empty()), "{failed}");
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(s.outputs(), 0, "no video may be left for a failed task");

    // Garbage after JPEG's first bytes: its size cannot be read, so ffmpeg
    // is not asked to guess.
    let garbage = server.url("corrupt.jpg");
    let out = s
        .executor
        .execute(&task(6, spec(vec![garbage.clone()])), LIMITS)
        .await;
    assert_eq!(
        reason(&out),
        format!(
            "image 1 ({garbage}): cannot read its width and height from its JPEG header (cut short or corrupt)"
        )
    );
    s.assert_clean();
}

#[tokio::test]
async fn a_slow_server_times_out_per_image() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let s = setup(|c| c.fetch.timeout = Duration::from_millis(300));
    let url = server.url("slow.jpg");
    let start = Instant::now();
    let out = s
        .executor
        .execute(&task(8, spec(vec![url.clone()])), LIMITS)
        .await;
    assert_eq!(
        reason(&out),
        format!("image {url}: no complete answer within 300ms")
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    s.assert_clean();
}

#[tokio::test]
async fn an_unreachable_host_fails_after_bounded_retries() {
    // A port that was just free: nothing listens there, connecting is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = setup(|c| c.fetch.retries = 2);
    let url = format!("http://127.0.0.1:{port}/a.jpg");
    let out = s
        .executor
        .execute(&task(9, spec(vec![url.clone()])), LIMITS)
        .await;
    let reason = reason(&out);
    assert!(
        reason.starts_with(&format!("image {url}: cannot connect: ")),
        "{reason}"
    );
    assert!(reason.contains("Connection refused"), "{reason}");
    s.assert_clean();
}

#[tokio::test]
async fn too_large_images_are_refused() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let s = setup(|c| c.fetch.max_bytes = 1 << 20);
    let url = server.url("huge.jpg");
    let out = s
        .executor
        .execute(&task(10, spec(vec![url.clone()])), LIMITS)
        .await;
    assert_eq!(
        reason(&out),
        format!("image {url}: larger than the 1048576-byte limit per image")
    );

    // Also for local files, before ffmpeg reads them.
    let s = setup(|c| c.fetch.max_bytes = 1000);
    let url = images.file_url("wide.jpg");
    let out = s
        .executor
        .execute(&task(10, spec(vec![url.clone()])), LIMITS)
        .await;
    assert_eq!(
        reason(&out),
        format!("image {url}: larger than the 1000-byte limit per image")
    );
    s.assert_clean();
}

#[tokio::test]
async fn an_empty_image_list_fails_clearly() {
    let s = setup(|_| {});
    let out = s.executor.execute(&task(11, spec(vec![])), LIMITS).await;
    assert_eq!(reason(&out), "animoto needs at least one image URL");
}

#[tokio::test]
async fn s3_needs_the_s3_backend() {
    let images = Images::make();
    let s = setup(|_| {});
    let out = s
        .executor
        .execute(&task(12, spec(vec!["s3://bucket/a.jpg".into()])), LIMITS)
        .await;
    assert_eq!(
        reason(&out),
        "image s3://bucket/a.jpg: s3:// needs the S3 backend (this worker has no object store configured)"
    );
    let mut to_s3 = spec(vec![images.file_url("small.png")]);
    to_s3.output = Some("s3://bucket/videos".into());
    let out = s.executor.execute(&task(12, to_s3), LIMITS).await;
    assert_eq!(
        reason(&out),
        "output s3://bucket/videos: s3:// needs the S3 backend (this worker has no object store configured)"
    );
    s.assert_clean();
}

#[tokio::test]
async fn a_missing_ffmpeg_is_reported_at_check_and_per_task() {
    let images = Images::make();
    let s = setup(|c| c.ffmpeg = "/nonexistent/ffmpeg".into());
    let check = s.executor.check().unwrap_err();
    assert!(check.starts_with("ffmpeg not found on PATH"), "{check}");
    let out = s
        .executor
        .execute(&task(13, spec(vec![images.file_url("small.png")])), LIMITS)
        .await;
    assert!(
        reason(&out).starts_with("ffmpeg not found on PATH (looked for `/nonexistent/ffmpeg`)"),
        "{out:?}"
    );
    assert!(reason(&out).contains("apt-get install ffmpeg"), "{out:?}");
    s.assert_clean();
    assert!(setup(|_| {}).executor.check().is_ok());
}

#[tokio::test]
async fn a_task_timeout_kills_the_encode_and_cleans_up() {
    let images = Images::make();
    let s = setup(|_| {});
    // Far more work than the time allowed: 40 images at 1080p, 25 fps.
    let mut spec = spec(vec![images.file_url("wide.jpg"); 40]);
    spec.resolution = None;
    spec.frame_rate = Some(25);
    let limits = ExecLimits {
        timeout: Some(Duration::from_millis(500)),
        output_bytes: 4096,
    };
    let start = Instant::now();
    let out = s.executor.execute(&task(14, spec), limits).await;
    assert_eq!(out.outcome, Outcome::TimedOut, "{out:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(s.outputs(), 0);
    s.assert_clean();
}

/// A loopback port that counts as "never connected to" when, at the end, it
/// has no connection waiting: the kernel queues completed handshakes whether
/// or not anyone accepts, so nothing here depends on timing.
struct Untouched(std::net::TcpListener);

impl Untouched {
    fn bind() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Self(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn assert_never_connected(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("something connected to the forbidden port: {other:?}"),
        }
    }
}

#[tokio::test]
async fn by_default_loopback_urls_are_refused_before_connecting() {
    let target = Untouched::bind();
    let port = target.port();
    let s = setup(|c| c.addresses = AddressPolicy::default());
    for url in [
        format!("http://127.0.0.1:{port}/a.jpg"),
        format!("http://[::ffff:127.0.0.1]:{port}/a.jpg"),
        // Names are checked on what they resolve to: localhost, and the
        // decimal form of 127.0.0.1 that the resolver understands.
        format!("http://localhost:{port}/a.jpg"),
        format!("http://2130706433:{port}/a.jpg"),
        format!("https://127.0.0.1:{port}/a.jpg"),
    ] {
        let started = Instant::now();
        let out = s
            .executor
            .execute(&task(20, spec(vec![url.clone()])), LIMITS)
            .await;
        let reason = reason(&out);
        assert!(
            reason.starts_with(&format!("image {url}: refused to connect to ")),
            "{reason}"
        );
        assert!(
            reason.contains(
                ": a loopback address (this worker downloads images from public addresses only)"
            ),
            "{reason}"
        );
        // Final at once: a refusal is not retried like a connect error.
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
    }
    target.assert_never_connected();
    s.assert_clean();
}

#[tokio::test]
async fn a_redirect_to_a_forbidden_address_is_refused() {
    let target = Untouched::bind();
    let forbidden = format!("http://127.0.0.1:{}/a.jpg", target.port());
    let hits = Arc::new(AtomicU32::new(0));
    let seen = hits.clone();
    let location = forbidden.clone();
    // The allowed server is on 127.0.0.2; only that address is allowed.
    let allowed = LoopbackServer::start_on(std::net::Ipv4Addr::new(127, 0, 0, 2), move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        Reply::redirect(302, location.clone())
    })
    .await
    .unwrap();
    let s = setup(|c| c.addresses = AddressPolicy::allowing(vec!["127.0.0.2/32".parse().unwrap()]));
    let url = allowed.url("r.jpg");
    let out = s
        .executor
        .execute(&task(21, spec(vec![url.clone()])), LIMITS)
        .await;
    assert_eq!(
        reason(&out),
        format!(
            "image {url} (redirected to {forbidden}): refused to connect to 127.0.0.1: a loopback address (this worker downloads images from public addresses only)"
        )
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the allowed server was asked once"
    );
    target.assert_never_connected();
    s.assert_clean();
}

/// ffmpeg 5.1 exits 0 when an image's data is cut short (its header is fine),
/// with an MP4 of no frames: the frames it reports are counted.
#[tokio::test]
async fn a_truncated_image_fails_its_task_and_is_named() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let s = setup(|_| {});
    let truncated = server.url("truncated.png");
    let urls = vec![server.url("small.png"), truncated.clone()];
    let out = s.executor.execute(&task(30, spec(urls)), LIMITS).await;
    let reason = reason(&out);
    assert!(reason.starts_with("ffmpeg wrote "), "{reason}");
    assert!(
        reason.contains(&format!(" of 10 frames: image 2 ({truncated}): [png @ ")),
        "{reason}"
    );
    assert!(reason.contains("chunk too big"), "{reason}");
    assert_eq!(s.outputs(), 0, "no video may be left for a failed task");
    s.assert_clean();
}

/// An ffmpeg that logs its arguments, one run a line, then runs the real one.
fn logged_ffmpeg(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (script, log) = (dir.join("ffmpeg"), dir.join("runs.log"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec ffmpeg \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

#[tokio::test]
async fn images_too_large_to_decode_are_refused_before_ffmpeg() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let bin = tempfile::tempdir().unwrap();
    let (ffmpeg, log) = logged_ffmpeg(bin.path());
    let s = setup(|c| c.ffmpeg = ffmpeg);

    // A header claiming 100 megapixels, against the default limit per image.
    let bomb = server.url("bomb.png");
    let urls = vec![server.url("small.png"), bomb.clone()];
    let out = s.executor.execute(&task(31, spec(urls)), LIMITS).await;
    assert_eq!(
        reason(&out),
        format!(
            "image 2 ({bomb}): 10000x10000 is 100 megapixels, more than this worker's limit of 50 per image (a decompression bomb?)"
        )
    );

    // A header that says no size.
    let headless = server.url("headless.png");
    let out = s
        .executor
        .execute(&task(31, spec(vec![headless.clone()])), LIMITS)
        .await;
    assert_eq!(
        reason(&out),
        format!(
            "image 1 ({headless}): cannot read its width and height from its PNG header (cut short or corrupt)"
        )
    );

    // Images over the graph's pixels are fitted alone first (below).
    let _ = &images;
    // ffmpeg was only asked for its encoders, never given an image.
    let runs = std::fs::read_to_string(&log).unwrap();
    assert!(
        runs.lines().all(|run| run == "-hide_banner -encoders"),
        "{runs}"
    );
    s.assert_clean();
}

/// Over `graph_pixels`, each image is fitted to the frame alone, and the
/// video made from those one at a time: the same exact video from mixed
/// formats and shapes; a bad image is named.
#[tokio::test]
async fn images_over_the_graphs_pixels_are_fitted_one_at_a_time() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let bin = tempfile::tempdir().unwrap();
    let (ffmpeg, log) = logged_ffmpeg(bin.path());
    let s = setup(|c| {
        c.ffmpeg = ffmpeg;
        c.graph_pixels = 0;
    });
    let mut spec3 = spec(vec![
        server.url("wide.jpg"),
        images.file_url("small.png"),
        server.url("portrait.jpg"),
    ]);
    spec3.seconds_per_image = Some(2);
    let out = s.executor.execute(&task(33, spec3), LIMITS).await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    assert_video(Path::new(&out.artifact.unwrap()), 6, (640, 360), 5);
    let runs = std::fs::read_to_string(&log).unwrap();
    let fits = runs.lines().filter(|r| r.contains("f00002.jpg")).count();
    assert_eq!(fits, 1, "{runs}");
    assert!(runs.contains("-i f%05d.jpg"), "{runs}");
    assert!(!runs.contains("-filter_complex_script"), "{runs}");

    let truncated = server.url("truncated.png");
    let urls = vec![server.url("small.png"), truncated.clone()];
    let out = s.executor.execute(&task(34, spec(urls)), LIMITS).await;
    let reason = reason(&out);
    assert!(
        reason.starts_with("ffmpeg failed (")
            && reason.contains(&format!("image 2 ({truncated}): ")),
        "{reason}"
    );
    s.assert_clean();
}

#[tokio::test]
async fn relative_and_protocol_relative_redirects_are_followed() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    // Another server (port), redirecting to the first with `//host:port/path`.
    let location = format!("//{}/small.png", server.addr());
    let other = LoopbackServer::start(move |_| Reply::redirect(302, location.clone()))
        .await
        .unwrap();
    let s = setup(|_| {});
    let urls = vec![
        other.url("anything.png"),
        server.url("relative.png"),
        server.url("a/b/up.png"),
    ];
    let out = s.executor.execute(&task(32, spec(urls)), LIMITS).await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    assert_video(Path::new(&out.artifact.unwrap()), 3, (640, 360), 5);
    s.assert_clean();
}

/// A server that answers every request with the whole header (Content-Length
/// included) and, for the first `cut` requests, half the body before it
/// closes the connection. Counts the requests.
struct CuttingServer {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicU32>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttingServer {
    async fn start(body: Vec<u8>, cut: u32) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let seen = hits.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let hit = seen.fetch_add(1, Ordering::SeqCst) + 1;
                let sent = if hit <= cut {
                    body.len() / 2
                } else {
                    body.len()
                };
                let mut reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                reply.extend_from_slice(&body[..sent]);
                let _ = stream.write_all(&reply).await;
                let _ = stream.shutdown().await;
            }
        });
        Self { addr, hits, accept }
    }

    fn url(&self) -> String {
        format!("http://{}/cut.png", self.addr)
    }

    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn a_body_cut_short_is_retried() {
    let images = Images::make();
    let s = setup(|c| c.fetch.retries = 2);

    // Cut once: the retry gets the whole image.
    let server = CuttingServer::start(images.bytes("small.png"), 1).await;
    let out = s
        .executor
        .execute(&task(33, spec(vec![server.url()])), LIMITS)
        .await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    assert_eq!(server.hits(), 2);

    // Always cut: the retries are bounded, and the URL is named.
    let server = CuttingServer::start(images.bytes("small.png"), u32::MAX).await;
    let url = server.url();
    let out = s
        .executor
        .execute(&task(33, spec(vec![url.clone()])), LIMITS)
        .await;
    let reason = reason(&out);
    assert!(
        reason.starts_with(&format!("image {url}: connection lost: ")),
        "{reason}"
    );
    assert_eq!(server.hits(), 3);
    s.assert_clean();
}

#[tokio::test]
async fn a_bad_output_is_refused_before_any_download() {
    use cloudkon_worker::exec::animoto::{DEFAULT_PRESIGN_EXPIRY, S3ObjectStore};
    let target = Untouched::bind();
    let url = format!("http://127.0.0.1:{}/a.jpg", target.port());
    // An object store (never used: no AWS configuration is loaded), so that
    // `s3://` outputs get as far as the output check.
    let s = setup(|c| c.fetch.timeout = Duration::from_millis(300));
    let executor = AnimotoExecutor::new(s.executor.config().clone())
        .with_object_store(Arc::new(S3ObjectStore::lazy(DEFAULT_PRESIGN_EXPIRY)));
    for (output, expected) in [
        (
            "S3://bucket/videos",
            "output: `S3://bucket/videos` is not a place for videos: give a local directory or s3://BUCKET/PREFIX (s3:// in lowercase)",
        ),
        (
            "s3://",
            "output: `s3://` has no bucket name: expected s3://BUCKET/KEY",
        ),
    ] {
        let mut spec = spec(vec![url.clone()]);
        spec.output = Some(output.into());
        let out = executor.execute(&task(34, spec), LIMITS).await;
        assert_eq!(reason(&out), expected);
    }
    target.assert_never_connected();
    s.assert_clean();
    assert_eq!(s.outputs(), 0);
}

/// A task whose downloads pass the worker's bytes per task fails alone,
/// naming the image that passed it, before ffmpeg and before the scratch
/// space (a pod's small `/tmp`) fills.
#[tokio::test]
async fn images_past_the_bytes_per_task_fail_the_task() {
    let images = Images::make();
    let server = server(&images, Arc::default()).await;
    let wide = images.bytes("wide.jpg").len() as u64;
    let small = images.bytes("small.png").len() as u64;
    let s = setup(|c| {
        c.fetch.task_bytes = Some(wide + small - 1);
        // One at a time: the image that passes the limit is the second.
        c.fetch.concurrency = 1;
    });
    let second = server.url("small.png");
    let urls = vec![server.url("wide.jpg"), second.clone()];
    let out = s.executor.execute(&task(35, spec(urls)), LIMITS).await;
    assert_eq!(
        reason(&out),
        format!(
            "image {second}: the task's images pass this worker's {}-byte limit per task (its scratch space, --animoto-task-bytes): use fewer or smaller images",
            wide + small - 1
        )
    );
    // Within the limit, the same task makes its video.
    let s = setup(|c| c.fetch.task_bytes = Some(wide + small));
    let urls = vec![server.url("wide.jpg"), server.url("small.png")];
    let out = s.executor.execute(&task(36, spec(urls)), LIMITS).await;
    assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
    s.assert_clean();
}

/// A 64x32 JPEG, red on the left half and blue on the right, with an EXIF
/// `Orientation` of `orientation` (an APP1 segment put after its start, as
/// cameras write it).
fn red_blue_jpeg(path: &Path, orientation: u16) {
    let plain = path.with_extension("plain.jpg");
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg("color=red:s=32x32[a];color=blue:s=32x32[b];[a][b]hstack")
        .args(["-frames:v", "1", "-q:v", "2"])
        .arg(&plain)
        .status()
        .unwrap();
    assert!(status.success());
    let jpeg = std::fs::read(&plain).unwrap();
    let out = cloudkon_testkit::with_exif_orientation(&jpeg, orientation);
    std::fs::write(path, out).unwrap();
}

/// Where the red and the blue are in a video's first frame: `"red above"`,
/// `"red left"`...
fn where_red_is(video: &Path) -> &'static str {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(video)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let p = probe(video);
    let (w, h) = (p.width as usize, p.height as usize);
    // Red, blue, or neither (the line between the halves, the letterbox).
    let red_at = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        let (r, b) = (out.stdout[i], out.stdout[i + 2]);
        (r.abs_diff(b) > 100).then_some(r > b)
    };
    // The image is fitted into a square frame: its middle is the image,
    // split across or down the middle.
    let (cx, cy, q) = (w / 2, h / 2, w.min(h) / 8);
    let across = (red_at(cx - q, cy), red_at(cx + q, cy));
    let down = (red_at(cx, cy - q), red_at(cx, cy + q));
    match (across, down) {
        ((Some(true), Some(false)), _) => "red left",
        ((Some(false), Some(true)), _) => "red right",
        (_, (Some(true), Some(false))) => "red above",
        (_, (Some(false), Some(true))) => "red below",
        other => panic!("no red half: {other:?}"),
    }
}

#[tokio::test]
async fn photos_are_turned_upright_by_their_exif_orientation_on_both_paths() {
    // Phones store the sensor's pixels and an orientation tag. ffmpeg 5.1
    // turns an `-i` input by it but not a `movie=` source: a video showed
    // the same photo upright or on its side depending on its size.
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (1, "red left"),
        (3, "red right"),
        (6, "red above"),
        (8, "red below"),
    ];
    for (orientation, _) in cases {
        red_blue_jpeg(&dir.path().join(format!("o{orientation}.jpg")), orientation);
    }
    for graph_pixels in [u64::MAX, 0] {
        let s = setup(|c| c.graph_pixels = graph_pixels);
        for (orientation, expected) in cases {
            let url = format!("file://{}/o{orientation}.jpg", dir.path().display());
            let mut spec = spec(vec![url]);
            spec.resolution = Some("256x256".into());
            let out = s
                .executor
                .execute(&task(u64::from(orientation), spec), LIMITS)
                .await;
            assert_eq!(out.outcome, Outcome::Succeeded, "{out:?}");
            let video = PathBuf::from(out.artifact.unwrap());
            assert_eq!(
                where_red_is(&video),
                expected,
                "orientation {orientation}, graph pixels {graph_pixels}"
            );
        }
        s.assert_clean();
    }
}
