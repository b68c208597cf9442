//! Animoto with S3, in every mode, against the real test servers (fauxqs for
//! SQS and S3, DynamoDB Local): `cloudkon run` with images over HTTP and from
//! S3 and videos put in S3; the same through `cloudkon submit` and a
//! `cloudkon-worker`; bad `s3://` inputs. Videos are downloaded back and
//! checked with ffprobe, presigned URLs fetched with a plain HTTP GET.
//!
//! Ignored by a plain `cargo test`; `scripts/test` runs them with the servers up.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cloudkon_core::aws::{Aws, S3Store, S3Uri};
use cloudkon_core::{Outcome, Summary, TaskResult};
use cloudkon_worker::loopback_http::LoopbackServer;
use common::{
    create_queue, finish, make_image, read_results, require_servers, runtime, stderr, stop, submit,
    unique, worker, worker_command, worker_with,
};

/// Test images in a directory, served over loopback HTTP, and a bucket with
/// copies of some of them (and an object that is not an image).
struct Inputs {
    dir: tempfile::TempDir,
    server: LoopbackServer,
    s3: S3Store,
    bucket: String,
}

impl Inputs {
    fn make(rt: &tokio::runtime::Runtime) -> Self {
        require_servers();
        let dir = tempfile::tempdir().unwrap();
        make_image(&dir.path().join("wide.jpg"), "1280x720");
        make_image(&dir.path().join("portrait.png"), "480x800");
        make_image(&dir.path().join("small.jpg"), "320x240");
        std::fs::write(dir.path().join("notes.txt"), "these are not pixels\n").unwrap();
        let (server, s3, bucket) = rt.block_on(async {
            let server = LoopbackServer::serve_dir(dir.path().to_path_buf())
                .await
                .unwrap();
            let s3 = Aws::load().await.s3();
            let bucket = unique("ck-animoto");
            s3.ensure_bucket(&bucket).await.unwrap();
            for name in ["portrait.png", "small.jpg", "notes.txt"] {
                s3.put_file(&bucket, &format!("in/{name}"), &dir.path().join(name))
                    .await
                    .unwrap();
            }
            (server, s3, bucket)
        });
        Self {
            dir,
            server,
            s3,
            bucket,
        }
    }

    fn s3_url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// A workload: a good task (1 HTTP image, 2 from S3), then a task with a
    /// missing S3 image, then one whose S3 object is not an image.
    fn workload(&self, output: Option<&str>) -> PathBuf {
        let output = output.map_or(String::new(), |o| format!(r#","output":"{o}""#));
        let path = self.dir.path().join("videos.txt");
        std::fs::write(
            &path,
            format!(
                "{{\"kind\":\"animoto\",\"urls\":[\"{}\",\"{}\",\"{}\"],\"seconds_per_image\":2,\"resolution\":\"640x360\"{output}}}\n\
                 animoto {} {}\n\
                 animoto {}\n",
                self.server.url("wide.jpg"),
                self.s3_url("in/portrait.png"),
                self.s3_url("in/small.jpg"),
                self.server.url("wide.jpg"),
                self.s3_url("in/missing.png"),
                self.s3_url("in/notes.txt"),
            ),
        )
        .unwrap();
        path
    }
}

fn sorted_results(path: &Path) -> Vec<TaskResult> {
    let mut results = read_results(path);
    results.sort_by_key(|r| r.id);
    results
}

/// What ffprobe says of a video (it decodes every frame to count them).
use cloudkon_testkit::probe;

/// A plain HTTP/1.1 GET, as a browser or curl fetches a presigned URL: no
/// credentials, no SDK.
fn http_get(url: &str) -> (String, Vec<u8>) {
    let rest = url
        .strip_prefix("http://")
        .expect("the test server speaks http");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    (head, response[split + 4..].to_vec())
}

/// The good task's result: its video is in S3 under `prefix`, is a 6 s
/// (3 images x 2 s) 640x360 H.264 yuv420p video, and its presigned URL
/// (valid `expiry_secs`) serves the same bytes without credentials.
fn check_video(
    rt: &tokio::runtime::Runtime,
    inputs: &Inputs,
    result: &TaskResult,
    prefix: &str,
    expiry_secs: u64,
) {
    assert_eq!(result.outcome, Outcome::Succeeded, "{result:?}");
    let expected = format!(
        "s3://{}/{prefix}/{}-{}.mp4",
        inputs.bucket, result.batch, result.id
    );
    assert_eq!(result.artifact.as_deref(), Some(expected.as_str()));
    let object = S3Uri::object(&expected).unwrap();
    let local = inputs.dir.path().join(format!("{}.mp4", result.id));
    rt.block_on(inputs.s3.download_to(&object.bucket, &object.key, &local))
        .unwrap();
    let p = probe(&local);
    assert_eq!(
        (p.codec.as_str(), p.pix_fmt.as_str(), p.width, p.height),
        ("h264", "yuv420p", 640, 360),
        "{p:?}"
    );
    // 5 fps (the default): within one frame of 6 s, and exactly 30 frames.
    assert!((p.duration - 6.0).abs() <= 0.2, "{p:?}");
    assert_eq!(p.frames_read, 30, "{p:?}");

    let url = result.artifact_url.as_deref().expect("a presigned URL");
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/{}/",
            endpoint.trim_end_matches('/'),
            inputs.bucket
        )),
        "{url}"
    );
    assert!(
        url.contains(&format!("X-Amz-Expires={expiry_secs}&")),
        "{url}"
    );
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let (head, body) = http_get(url);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body == std::fs::read(&local).unwrap(),
        "the presigned URL served other bytes than the object ({} bytes)",
        body.len()
    );
}

fn check_bad_inputs(inputs: &Inputs, results: &[TaskResult]) {
    assert_eq!(
        results[1].outcome,
        Outcome::Failed {
            reason: format!("image {}: no such object", inputs.s3_url("in/missing.png"))
        }
    );
    let Outcome::Failed { reason } = &results[2].outcome else {
        panic!("{:?}", results[2]);
    };
    assert!(
        reason.starts_with(&format!(
            "image {}: not an image (",
            inputs.s3_url("in/notes.txt")
        )),
        "{reason}"
    );
    for r in &results[1..] {
        assert_eq!((r.artifact.as_ref(), r.artifact_url.as_ref()), (None, None));
    }
}

/// The keys under `prefix` in the bucket are the good task's video and no more.
fn assert_only_video(rt: &tokio::runtime::Runtime, inputs: &Inputs, key: &str) {
    let missing = |id: u64| key.replace("-0.mp4", &format!("-{id}.mp4"));
    for id in [1, 2] {
        let err = rt
            .block_on(inputs.s3.get_bytes(&inputs.bucket, &missing(id)))
            .unwrap_err();
        assert_eq!(err.kind, cloudkon_core::aws::ErrorKind::NotFound, "{err}");
    }
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn run_puts_videos_from_http_and_s3_images_in_s3() {
    let rt = runtime();
    let inputs = Inputs::make(&rt);
    let results = inputs.dir.path().join("r.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
        .args(["run", "--workers", "2", "--batch", "s3show"])
        .arg("--animoto-out")
        .arg(inputs.s3_url("videos/"))
        .args(["--presign-expiry", "1h", "-o"])
        .arg(&results)
        .arg(inputs.workload(None))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    // Two tasks fail (bad inputs), so the exit status says so.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results = sorted_results(&results);
    assert_eq!(results.len(), 3, "{results:?}");
    check_video(&rt, &inputs, &results[0], "videos", 3600);
    check_bad_inputs(&inputs, &results);
    assert_only_video(&rt, &inputs, "videos/s3show-0.mp4");
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_worker_puts_videos_in_s3_through_sqs() {
    let rt = runtime();
    let inputs = Inputs::make(&rt);
    let queue = create_queue(&unique("animoto"), Duration::from_secs(30), None);
    let table = unique("ledger-animoto");
    // The worker's default output is a local directory: the task's own
    // `output` sends its video to S3.
    let local_out = inputs.dir.path().join("worker-videos");
    let w = worker_with(
        queue.url(),
        &table,
        "anim1",
        "20s",
        &[
            "--animoto-out",
            local_out.to_str().unwrap(),
            // The image server is on loopback, which a worker refuses by
            // default: allow that one address, nothing wider.
            "--allow-downloads-from",
            "127.0.0.1/32",
        ],
    );
    let results = inputs.dir.path().join("r.jsonl");
    let workload = inputs.workload(Some(&inputs.s3_url("from-workers")));
    let out = finish(
        submit(&workload, queue.url(), &results),
        Duration::from_secs(180),
    );
    stop(w);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary: Summary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary.succeeded, summary.failed), (1, 2), "{summary:?}");
    let results = sorted_results(&results);
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results[0].worker.starts_with("anim1"), "{:?}", results[0]);
    check_video(&rt, &inputs, &results[0], "from-workers", 604_800);
    check_bad_inputs(&inputs, &results);
    // Nothing went to the worker's local directory.
    assert!(
        !local_out
            .join(format!("{}-0.mp4", results[0].batch))
            .exists()
    );
    rt.block_on(async {
        let _ = queue.delete().await;
    });
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_worker_refuses_loopback_images_by_default_before_connecting() {
    require_servers();
    // A loopback port nobody accepts on: a connection would wait in its
    // backlog, so "none waiting" at the end means none was made.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let port = target.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let queue = create_queue(&unique("ssrf"), Duration::from_secs(30), None);
    let table = unique("ledger-ssrf");
    let w = worker(queue.url(), &table, "ssrf1", "20s");
    let workload = dir.path().join("w.txt");
    std::fs::write(
        &workload,
        format!(
            "animoto http://127.0.0.1:{port}/a.png\n\
             animoto http://localhost:{port}/a.png\n\
             animoto http://[::ffff:127.0.0.1]:{port}/a.png\n"
        ),
    )
    .unwrap();
    let results = dir.path().join("r.jsonl");
    let out = finish(
        submit(&workload, queue.url(), &results),
        Duration::from_secs(60),
    );
    stop(w);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results = sorted_results(&results);
    assert_eq!(results.len(), 3, "{results:?}");
    for r in &results {
        let Outcome::Failed { reason } = &r.outcome else {
            panic!("{r:?}");
        };
        assert!(
            reason.contains(": refused to connect to ")
                && reason.contains(
                    "a loopback address (this worker downloads images from public addresses only)"
                ),
            "{reason}"
        );
    }
    match target.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the worker connected to the loopback port: {other:?}"),
    }
    rt_delete(queue);
}

#[test]
#[ignore = "needs the AWS test servers: scripts/test starts them"]
fn a_worker_without_ffmpeg_runs_other_tasks_and_fails_animoto_clearly() {
    require_servers();
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let queue = create_queue(&unique("noffmpeg"), Duration::from_secs(30), None);
    let table = unique("ledger-noffmpeg");
    let log = dir.path().join("worker.log");
    let w = worker_command(queue.url(), &table, "noff", "20s")
        .env("PATH", &empty_path)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let workload = dir.path().join("w.txt");
    std::fs::write(
        &workload,
        "sleep 10
animoto file:///nowhere/a.png
",
    )
    .unwrap();
    let results = dir.path().join("r.jsonl");
    let out = finish(
        submit(&workload, queue.url(), &results),
        Duration::from_secs(60),
    );
    stop(w);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results = sorted_results(&results);
    assert_eq!(results[0].outcome, Outcome::Succeeded, "{:?}", results[0]);
    let Outcome::Failed { reason } = &results[1].outcome else {
        panic!("{:?}", results[1]);
    };
    assert!(
        reason.starts_with("ffmpeg not found on PATH") && reason.contains("apt-get install ffmpeg"),
        "{reason}"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("animoto tasks will fail on this worker: ffmpeg not found"),
        "{log}"
    );
    rt_delete(queue);
}

fn rt_delete(queue: cloudkon_core::aws::SqsQueue) {
    runtime().block_on(async {
        let _ = queue.delete().await;
    });
}

#[test]
fn a_bad_s3_output_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let workload = dir.path().join("w.txt");
    std::fs::write(&workload, "sleep 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkon"))
        .args(["run", "--animoto-out", "s3:///videos"])
        .arg(&workload)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has no bucket name"),
        "{}",
        stderr(&out)
    );
}
