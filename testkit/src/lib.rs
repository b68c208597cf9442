//! What the workspace's tests share (a dev-dependency only): the check that
//! the AWS test servers are the ones in use, names no other test takes, one
//! test at a time where fleets would starve each other, and test images and
//! videos made and read with ffmpeg, a test server stopped for a while, and
//! a proxy that refuses some of its requests as IAM would. Std and nix only,
//! so that every crate's tests, core's included, can use it.

mod refusing_proxy;
pub use refusing_proxy::{RefusingProxy, Request};

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Fails unless the AWS endpoints point at the test servers
/// (`scripts/aws-servers`): a test must never reach real AWS.
pub fn require_aws_servers() {
    for var in [
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_S3",
    ] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run these tests with scripts/test, or after \
             `source \"$(scripts/aws-servers up)\"`"
        );
    }
}

/// A name no other test, or earlier run, takes: lowercase, digits and
/// hyphens, short enough for a namespace, queue, table or bucket with the
/// prefix and what the code adds to it.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}{}",
        std::process::id() % 10_000,
        nanos % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test at a time in a test binary: those that run operators and worker
/// fleets would starve each other's lease renewals on two cores, which is a
/// take-over (a re-run) the test would then blame on the code.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A test picture of `size` (`WIDTHxHEIGHT`) made by ffmpeg, in the format
/// the extension of `path` names.
pub fn make_image(path: &Path, size: &str) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={size}:rate=1"))
        .args(["-frames:v", "1"])
        .arg(path)
        .status()
        .expect("ffmpeg must be installed for these tests (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg could not make {}", path.display());
}

/// `jpeg` (a whole JPEG, from its start-of-image marker) with an EXIF
/// APP1 segment that gives `orientation` inserted after that marker, as a
/// phone writes it: a big-endian TIFF header and one IFD entry,
/// Orientation (0x0112), a SHORT.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    assert!(jpeg.starts_with(&[0xFF, 0xD8]), "not a JPEG");
    let mut app1 = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    app1.extend(1u16.to_be_bytes()); // one entry
    app1.extend(0x0112u16.to_be_bytes());
    app1.extend(3u16.to_be_bytes()); // SHORT
    app1.extend(1u32.to_be_bytes()); // one value
    app1.extend(orientation.to_be_bytes());
    app1.extend([0, 0]); // the value's padding to 4 bytes
    app1.extend(0u32.to_be_bytes()); // no next IFD
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend(u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

/// A video's first stream, as ffprobe reads it (every frame decoded).
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub codec: String,
    pub pix_fmt: String,
    pub width: u32,
    pub height: u32,
    pub frames_read: u64,
    /// Seconds.
    pub duration: f64,
}

impl Probe {
    /// `WIDTHxHEIGHT`.
    pub fn size(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

pub fn probe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,nb_read_frames:format=duration",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .expect("ffprobe must be installed for these tests (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        stderr(&out)
    );
    let text = stdout(&out);
    let field = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_string()
    };
    Probe {
        codec: field("codec_name"),
        pix_fmt: field("pix_fmt"),
        width: field("width").parse().unwrap(),
        height: field("height").parse().unwrap(),
        frames_read: field("nb_read_frames").parse().unwrap(),
        duration: field("duration").parse().unwrap(),
    }
}

/// A test server's process stopped (SIGSTOP) until this is dropped
/// (SIGCONT), even when the test fails: the other tests need it.
/// `pid_var` names the variable `scripts/aws-servers` exports its pid in
/// (`CLOUDKON_DYNAMODB_PID`, `CLOUDKON_SQS_PID`...).
pub struct StoppedServer(nix::unistd::Pid);

impl StoppedServer {
    pub fn stop(pid_var: &str) -> StoppedServer {
        let pid: i32 = std::env::var(pid_var)
            .unwrap_or_else(|_| panic!("{pid_var} is not set (scripts/aws-servers exports it)"))
            .parse()
            .unwrap_or_else(|e| panic!("{pid_var}: {e}"));
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)
            .unwrap_or_else(|e| panic!("cannot stop {pid_var} ({pid}): {e}"));
        StoppedServer(pid)
    }
}

impl Drop for StoppedServer {
    fn drop(&mut self) {
        nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid_everywhere() {
        let a = unique("e2e-ledger");
        let b = unique("e2e-ledger");
        assert_ne!(a, b);
        assert!(a.len() <= 40, "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
    }
}
