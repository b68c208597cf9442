//! What the operator's tests against the local control plane share.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cloudkon_core::aws::{Aws, ErrorKind};

/// The workspace root (the examples, charts and README are read from it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate is in the workspace")
        .to_path_buf()
}

/// The control plane's kubectl and helm, when KUBECONFIG is the one
/// `scripts/control-plane` wrote; otherwise fails saying how to start it (a
/// test must never touch another cluster).
pub fn require_control_plane() -> (String, String) {
    let state = std::env::var_os("CLOUDKON_KUBE_STATE_DIR");
    let kubeconfig = std::env::var_os("KUBECONFIG");
    let local = match (&state, &kubeconfig) {
        (Some(state), Some(kubeconfig)) => {
            Path::new(kubeconfig) == Path::new(state).join("kubeconfig")
        }
        _ => false,
    };
    assert!(
        local,
        "KUBECONFIG is not the local control plane's: run scripts/test, or \
         source \"$(scripts/control-plane up)\" first"
    );
    (
        std::env::var("CLOUDKON_KUBECTL").unwrap_or_else(|_| "kubectl".into()),
        std::env::var("CLOUDKON_HELM").unwrap_or_else(|_| "helm".into()),
    )
}

/// The results objects of a batch, parsed: task id → how many lines.
pub fn results_in_s3(
    rt: &tokio::runtime::Runtime,
    bucket: &str,
    prefix: &str,
) -> BTreeMap<u64, u32> {
    let s3 = rt.block_on(Aws::load()).s3();
    let mut ids = BTreeMap::new();
    for part in 0.. {
        let key = format!("{prefix}part-{part:06}.jsonl");
        match rt.block_on(s3.get_bytes(bucket, &key)) {
            Ok(bytes) => {
                for line in String::from_utf8(bytes).unwrap().lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    *ids.entry(v["id"].as_u64().unwrap()).or_default() += 1;
                }
            }
            Err(e) if e.kind == ErrorKind::NotFound => break,
            Err(e) => panic!("{e}"),
        }
    }
    ids
}

/// ffprobe's view of a video's first stream: "codec,width,height,duration,".
pub fn probe_video(video: &Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args([
            "stream=codec_name,width,height:format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(video)
        .output()
        .expect("ffprobe must be installed for these tests (apt-get install ffmpeg)");
    String::from_utf8_lossy(&out.stdout).replace('\n', ",")
}

/// The duration (seconds) in what `probe_video` returned.
pub fn probed_duration(probe: &str) -> f64 {
    probe
        .trim_end_matches(',')
        .rsplit(',')
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no duration in ffprobe's output {probe:?}"))
}

/// A test picture of that size ("640x480"), made with ffmpeg.
pub fn make_png(path: &Path, size: &str) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate=1"))
        .args(["-frames:v", "1"])
        .arg(path)
        .status()
        .expect("ffmpeg must be installed for these tests (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg could not make {}", path.display());
}
