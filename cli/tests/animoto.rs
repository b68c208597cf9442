//! `cloudkon run` on Animoto workloads, as a user runs it: images over HTTP and
//! from files, videos checked with ffprobe; and no ffmpeg needed for other kinds.

mod common;

use std::path::Path;
use std::process::Command;

use cloudkon_core::{Outcome, TaskResult};
use cloudkon_worker::loopback_http::LoopbackServer;
use common::{make_image, stderr};

fn cloudkon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudkon"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Duration in seconds and `WIDTHxHEIGHT` of a video.
fn probe(path: &Path) -> (f64, String) {
    let p = cloudkon_testkit::probe(path);
    (p.duration, p.size())
}

#[test]
fn run_makes_videos_from_http_and_file_images() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    make_image(&images.join("a.jpg"), "1920x1080");
    make_image(&images.join("b.png"), "480x800");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(LoopbackServer::serve_dir(images.clone()))
        .unwrap();

    let file = |name: &str| format!("file://{}", images.join(name).display());
    let workload = dir.path().join("videos.txt");
    std::fs::write(
        &workload,
        format!(
            "animoto {} {} {}\n\
             {{\"kind\":\"animoto\",\"urls\":[\"{}\"],\"seconds_per_image\":3,\"resolution\":\"640x360\"}}\n\
             animoto {}\n",
            server.url("a.jpg"),
            server.url("b.png"),
            file("a.jpg"),
            file("b.png"),
            server.url("gone.jpg"),
        ),
    )
    .unwrap();
    let (out_dir, results) = (dir.path().join("videos"), dir.path().join("r.jsonl"));
    let out = cloudkon()
        .args(["run", "--workers", "2", "--batch", "show", "--animoto-out"])
        .arg(&out_dir)
        .arg("-o")
        .arg(&results)
        .arg(&workload)
        .output()
        .unwrap();
    // One task fails (a 404), so the exit status says so.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    let mut results: Vec<TaskResult> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    results.sort_by_key(|r| r.id);
    assert_eq!(results.len(), 3);
    let video = out_dir.join("show-0.mp4");
    assert_eq!(results[0].outcome, Outcome::Succeeded, "{:?}", results[0]);
    assert_eq!(results[0].artifact.as_deref(), video.to_str());
    assert_eq!(probe(&video), (3.0, "1920x1080".to_string()));
    assert_eq!(
        probe(&out_dir.join("show-1.mp4")),
        (3.0, "640x360".to_string())
    );
    assert_eq!(
        results[2].outcome,
        Outcome::Failed {
            reason: format!("image {}: HTTP 404 Not Found", server.url("gone.jpg"))
        }
    );
    assert!(!out_dir.join("show-2.mp4").exists());
}

#[test]
fn without_ffmpeg_animoto_is_refused_up_front_and_other_kinds_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let animoto = dir.path().join("a.txt");
    std::fs::write(&animoto, "sleep 1\nanimoto file:///x.png\n").unwrap();
    let out = cloudkon()
        .env("PATH", &empty_path)
        .arg("run")
        .arg(&animoto)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.contains("error: cannot run animoto tasks: ffmpeg not found on PATH"),
        "{err}"
    );
    assert!(err.contains("apt-get install ffmpeg"), "{err}");

    let sleeps = dir.path().join("s.txt");
    std::fs::write(&sleeps, "sleep 1\nsleep 0\n").unwrap();
    let out = cloudkon()
        .env("PATH", &empty_path)
        .arg("run")
        .arg(&sleeps)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
