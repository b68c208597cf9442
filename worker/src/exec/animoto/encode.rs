//! The video: one ffmpeg process (run like a `run` task: own process group,
//! timeout, bounded stderr) turning a task's images into an H.264 MP4.
//!
//! How, and why (measured on 60 mixed JPEG/PNG images, 1080p, 2 cores):
//! - Each image is its own `movie=` source in one filter graph: the concat
//!   *demuxer* would feed every file to the first file's decoder, which breaks
//!   on mixed JPEG/PNG input.
//! - Each image is decoded, scaled to fit, letterboxed and converted to yuv420p
//!   once; frames are then duplicated by `fps` after the concat, which is cheap.
//! - Timestamps are rewritten (`setpts=N*S/TB`), the last image is held for its
//!   share (`tpad`), and `-frames:v` cuts at exactly images × seconds × rate
//!   frames: the duration is exact.
//! - x264 `ultrafast` with `-tune stillimage`: `veryfast` took 2.8x longer for
//!   no visible gain on stills.
//! - ffmpeg's exit status is not enough: an image whose header is fine but whose
//!   data is cut short makes ffmpeg 5.1 print "Error while filtering" and exit 0
//!   with an MP4 of no frames. `-progress pipe:1` makes it report the frames it
//!   wrote; a video with fewer than planned is a failure.
//! - On a failure, each image is decoded alone to name the one at fault: the
//!   graph's stderr says only `[png @ 0x..] chunk too big`.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use cloudkon_core::Outcome;
use tokio::process::Command;

use super::orientation::Orientation;
use crate::exec::ExecLimits;
use crate::exec::run::run_command;

/// Lines of ffmpeg's stderr quoted in a failure reason.
const STDERR_LINES: usize = 4;

/// The search for the image at fault after a failed encode: all of it, and
/// one image (decoding one still takes well under a second; one that takes
/// this long is itself the problem).
const DIAGNOSE_BUDGET: Duration = Duration::from_secs(60);
const DIAGNOSE_PER_IMAGE: Duration = Duration::from_secs(20);

/// Pixels a second an encode is allowed at the least: x264 `ultrafast`
/// wrote about 200 frames a second of 1080p (415 million pixels) on 2 cores
/// here; a tenth of that, for a busy or small machine.
const SLOW_PIXEL_RATE: f64 = 40e6;

/// The video to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodePlan {
    pub width: u32,
    pub height: u32,
    pub seconds_per_image: u32,
    pub frame_rate: u32,
}

impl EncodePlan {
    /// Frames in the video: exactly images × seconds per image × frame rate.
    pub fn frames(&self, images: usize) -> u64 {
        images as u64 * u64::from(self.seconds_per_image) * u64::from(self.frame_rate)
    }

    /// The time a slow machine takes to encode the video: its pixels at
    /// [`SLOW_PIXEL_RATE`]. A long video gets this where it is more than the
    /// executor's `encode_timeout`.
    pub fn slow_encode_time(&self, images: usize) -> Duration {
        let pixels = self.frames(images) as f64 * f64::from(self.width) * f64::from(self.height);
        Duration::from_secs_f64(pixels / SLOW_PIXEL_RATE)
    }

    /// The filter graph over `names`, image files relative to ffmpeg's working
    /// directory (so that no path needs filter-graph escaping), each turned
    /// upright by its `orientations`.
    pub fn filter_graph(&self, names: &[String], orientations: &[Orientation]) -> String {
        let (w, h) = (self.width, self.height);
        let mut graph = String::with_capacity(names.len() * 200 + 200);
        for (i, (name, orientation)) in names.iter().zip(orientations).enumerate() {
            // trim: an animated GIF contributes its first frame, like any still.
            let turn = orientation.filters();
            graph.push_str(&format!(
                "movie={name},trim=end_frame=1,{turn}\
                 scale={w}:{h}:force_original_aspect_ratio=decrease:force_divisible_by=2,\
                 pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1,format=yuv420p[v{i}];\n"
            ));
        }
        for i in 0..names.len() {
            graph.push_str(&format!("[v{i}]"));
        }
        let (s, r) = (self.seconds_per_image, self.frame_rate);
        graph.push_str(&format!(
            "concat=n={}:v=1:a=0,setpts=N*{s}/TB,tpad=stop_mode=clone:stop_duration={s},fps={r}[out]\n",
            names.len()
        ));
        graph
    }

    /// ffmpeg's arguments: the graph is read from the file `graph` (a long list
    /// of images would overflow one command-line argument), the MP4 goes to `output`.
    pub fn ffmpeg_args(&self, images: usize, graph: &Path, output: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = QUIET.map(OsString::from).into();
        args.push("-filter_complex_script".into());
        args.push(graph.into());
        args.extend(["-map", "[out]"].map(OsString::from));
        self.push_output_args(&mut args, images, output);
        args
    }

    /// ffmpeg's arguments for images already fitted to the frame, named
    /// `f00000.jpg`, `f00001.jpg`...: the image2 demuxer reads and decodes
    /// them one at a time, each shown for `seconds_per_image`.
    pub fn fitted_args(&self, images: usize, output: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = QUIET.map(OsString::from).into();
        args.extend(
            [
                "-framerate",
                &format!("1/{}", self.seconds_per_image),
                "-start_number",
                "0",
                "-i",
                FITTED_PATTERN,
                "-vf",
                &format!("fps={},format=yuv420p", self.frame_rate),
            ]
            .map(OsString::from),
        );
        self.push_output_args(&mut args, images, output);
        args
    }

    /// ffmpeg's arguments that fit image `name` alone to the frame, turned
    /// upright by its `orientation` (ffmpeg's own turn off: it does not make
    /// it in a `movie=` source), and write it as `fitted` (a high-quality
    /// JPEG: a few hundred KB at 1080p).
    pub fn fit_args(&self, name: &str, orientation: Orientation, fitted: &str) -> Vec<OsString> {
        let (w, h) = (self.width, self.height);
        let mut args: Vec<OsString> = QUIET.map(OsString::from).into();
        let turn = orientation.filters();
        args.extend(
            [
                "-noautorotate",
                "-i",
                name,
                "-vf",
                &format!(
                    "{turn}scale={w}:{h}:force_original_aspect_ratio=decrease:force_divisible_by=2,\
                 pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1"
                ),
                // An animated GIF contributes its first frame, like any still.
                "-frames:v",
                "1",
                "-q:v",
                "2",
                fitted,
            ]
            .map(OsString::from),
        );
        args
    }

    fn push_output_args(&self, args: &mut Vec<OsString>, images: usize, output: &Path) {
        for arg in [
            "-frames:v",
            &self.frames(images).to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "stillimage",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            // The frames written, on stdout: a final block `frame=N ...
            // progress=end` (a long period: no blocks in between).
            "-progress",
            "pipe:1",
            "-stats_period",
            "100000",
        ] {
            args.push(arg.into());
        }
        args.push(output.into());
    }
}

/// What every ffmpeg run here starts with: no banner, no stdin, errors only,
/// overwrite (the output is a temporary file of this task's).
const QUIET: [&str; 5] = ["-hide_banner", "-nostdin", "-loglevel", "error", "-y"];

/// The fitted images' names, for the image2 demuxer.
const FITTED_PATTERN: &str = "f%05d.jpg";

fn fitted_name(i: usize) -> String {
    format!("f{i:05}.jpg")
}

/// How a task's images become frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staging {
    /// One filter graph over every image: the fastest, but ffmpeg holds every
    /// image decoded at once.
    Graph,
    /// Each image fitted to the frame alone first (`concurrency` ffmpegs at
    /// once), then the video made from those one at a time: memory bounded
    /// by the largest image, for more time (one ffmpeg start per image).
    Fitted { concurrency: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot write the filter graph {}: {source}", path.display())]
    Graph {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ffmpeg failed ({reason}){}", detail(.culprit, .stderr))]
    Failed {
        reason: String,
        stderr: String,
        culprit: Option<Culprit>,
    },
    /// ffmpeg exited 0 but wrote fewer frames than planned (an image it could
    /// not decode contributed none).
    #[error("ffmpeg wrote {wrote} of {planned} frames{}", detail(.culprit, .stderr))]
    ShortVideo {
        wrote: u64,
        planned: u64,
        stderr: String,
        culprit: Option<Culprit>,
    },
    #[error("ffmpeg did not finish within {0:?} (killed)")]
    TimedOut(Duration),
}

/// The image ffmpeg cannot decode, found by decoding each alone.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("image {number} ({url}): {words}")]
pub struct Culprit {
    /// 1 for the task's first image.
    pub number: usize,
    pub url: String,
    /// The tail of ffmpeg's stderr for that image alone.
    pub words: String,
}

/// The image at fault when there is one (it says more than the graph's
/// stderr), else the graph's stderr.
fn detail(culprit: &Option<Culprit>, stderr: &str) -> String {
    match culprit {
        Some(culprit) => format!(": {culprit}"),
        None if stderr.is_empty() => String::new(),
        None => format!(": {stderr}"),
    }
}

/// A task's images, in its scratch directory (ffmpeg's working directory):
/// image `i` is the file `names[i]`, goes the way up `orientations[i]` says,
/// and came from `urls[i]` (named in errors).
#[derive(Clone, Copy, Debug)]
pub struct Images<'a> {
    pub names: &'a [String],
    pub orientations: &'a [Orientation],
    pub urls: &'a [String],
}

/// Encodes `images` (in `dir`) to `output`, within `timeout` in all.
pub async fn encode(
    ffmpeg: &Path,
    plan: &EncodePlan,
    dir: &Path,
    images: Images<'_>,
    output: &Path,
    timeout: Duration,
    staging: Staging,
) -> Result<(), EncodeError> {
    let Images {
        names,
        orientations,
        urls,
    } = images;
    debug_assert!(names.len() == urls.len() && names.len() == orientations.len());
    let deadline = Instant::now() + timeout;
    let args = match staging {
        Staging::Graph => {
            let graph = dir.join("graph.txt");
            std::fs::write(&graph, plan.filter_graph(names, orientations)).map_err(|source| {
                EncodeError::Graph {
                    path: graph.clone(),
                    source,
                }
            })?;
            plan.ffmpeg_args(names.len(), &graph, output)
        }
        Staging::Fitted { concurrency } => {
            fit_each(ffmpeg, plan, dir, images, deadline, timeout, concurrency).await?;
            plan.fitted_args(names.len(), output)
        }
    };
    let out = run_ffmpeg(
        ffmpeg,
        dir,
        args,
        deadline.saturating_duration_since(Instant::now()),
    )
    .await;
    let planned = plan.frames(names.len());
    // Fitted images are this worker's own JPEGs: each was decoded once.
    let diagnose = || async {
        match staging {
            Staging::Graph => diagnose(ffmpeg, dir, names, urls).await,
            Staging::Fitted { .. } => None,
        }
    };
    match out.outcome {
        Outcome::Succeeded => {
            // No report counts as no frames: a video is only vouched for by it.
            let wrote = frames_written(&out.stdout).unwrap_or(0);
            if wrote == planned {
                return Ok(());
            }
            Err(EncodeError::ShortVideo {
                wrote,
                planned,
                stderr: stderr_tail(&out.stderr),
                culprit: diagnose().await,
            })
        }
        Outcome::TimedOut => Err(EncodeError::TimedOut(timeout)),
        Outcome::Failed { reason } => Err(EncodeError::Failed {
            reason,
            stderr: stderr_tail(&out.stderr),
            culprit: diagnose().await,
        }),
    }
}

/// Fits each image to the frame alone ([`Staging::Fitted`]), `concurrency`
/// at once, removing each original once fitted (scratch space); the first
/// image that fails stops the rest and is named.
async fn fit_each(
    ffmpeg: &Path,
    plan: &EncodePlan,
    dir: &Path,
    images: Images<'_>,
    deadline: Instant,
    timeout: Duration,
    concurrency: usize,
) -> Result<(), EncodeError> {
    use futures_util::TryStreamExt;
    let each = images
        .names
        .iter()
        .zip(images.orientations)
        .zip(images.urls);
    futures_util::stream::iter(each.enumerate().map(Ok))
        .try_for_each_concurrent(
            concurrency.max(1),
            |(i, ((name, orientation), url))| async move {
                let args = plan.fit_args(name, *orientation, &fitted_name(i));
                let left = deadline.saturating_duration_since(Instant::now());
                let out = run_ffmpeg(ffmpeg, dir, args, left).await;
                match out.outcome {
                    Outcome::Succeeded => {
                        let _ = std::fs::remove_file(dir.join(name));
                        Ok(())
                    }
                    Outcome::TimedOut => Err(EncodeError::TimedOut(timeout)),
                    Outcome::Failed { reason } => {
                        let words = failure_words(&reason, &out.stderr);
                        Err(EncodeError::Failed {
                            reason,
                            stderr: String::new(),
                            culprit: Some(Culprit {
                                number: i + 1,
                                url: url.clone(),
                                words,
                            }),
                        })
                    }
                }
            },
        )
        .await
}

/// The frame count of ffmpeg's last `-progress` block.
fn frames_written(progress: &str) -> Option<u64> {
    progress
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("frame="))
        .and_then(|n| n.trim().parse().ok())
}

/// The first image that ffmpeg cannot decode alone, one after the other (a
/// failed encode is rare; this keeps it to one ffmpeg at a time), within
/// [`DIAGNOSE_BUDGET`]. Only a failed decode names an image: one that decodes
/// with complaints may not be why the video failed.
async fn diagnose(ffmpeg: &Path, dir: &Path, names: &[String], urls: &[String]) -> Option<Culprit> {
    let deadline = Instant::now() + DIAGNOSE_BUDGET;
    for (i, (name, url)) in names.iter().zip(urls).enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::debug!(
                images = names.len(),
                checked = i,
                "no time left to find the bad image"
            );
            return None;
        }
        let mut args: Vec<OsString> = QUIET.map(OsString::from).into();
        args.extend(["-i", name, "-frames:v", "1", "-f", "null", "-"].map(OsString::from));
        let timeout = left.min(DIAGNOSE_PER_IMAGE);
        let out = run_ffmpeg(ffmpeg, dir, args, timeout).await;
        let words = match out.outcome {
            Outcome::Succeeded => continue,
            // Out of the whole budget: this image is not known to be at fault.
            Outcome::TimedOut if timeout < DIAGNOSE_PER_IMAGE => return None,
            Outcome::TimedOut => format!("ffmpeg could not decode it within {timeout:?}"),
            Outcome::Failed { reason } => failure_words(&reason, &out.stderr),
        };
        return Some(Culprit {
            number: i + 1,
            url: url.clone(),
            words,
        });
    }
    None
}

/// Runs ffmpeg in `dir` (where the images are) as a `run` task runs: its
/// own process group, `timeout`, the tail of its output kept.
async fn run_ffmpeg(
    ffmpeg: &Path,
    dir: &Path,
    args: Vec<OsString>,
    timeout: Duration,
) -> crate::exec::ExecOutput {
    let mut command = Command::new(ffmpeg);
    command.args(args).current_dir(dir);
    let limits = ExecLimits {
        timeout: Some(timeout),
        output_bytes: 4096,
    };
    run_command(command, &ffmpeg.to_string_lossy(), limits).await
}

/// Why ffmpeg could not decode an image: its stderr's last lines, else how
/// it ended.
fn failure_words(reason: &str, stderr: &str) -> String {
    match stderr_tail(stderr) {
        tail if tail.is_empty() => format!("ffmpeg cannot decode it ({reason})"),
        tail => tail,
    }
}

/// The last lines of ffmpeg's stderr, on one line.
fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(STDERR_LINES)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: EncodePlan = EncodePlan {
        width: 1280,
        height: 720,
        seconds_per_image: 2,
        frame_rate: 5,
    };

    #[test]
    fn frames_are_images_times_seconds_times_rate() {
        assert_eq!(PLAN.frames(3), 30);
    }

    #[test]
    fn a_long_video_is_allowed_the_time_a_slow_machine_takes() {
        // 500 images x 10 s x 30 fps at 1080p: 150,000 frames.
        let long = EncodePlan {
            width: 1920,
            height: 1080,
            seconds_per_image: 10,
            frame_rate: 30,
        };
        assert_eq!(long.slow_encode_time(500).as_secs(), 7776);
        // 30 frames of 720p: well under any timeout.
        assert!(PLAN.slow_encode_time(3) < Duration::from_secs(1));
    }

    #[test]
    fn graph_letterboxes_each_image_and_holds_the_last() {
        let upright = [Orientation::UPRIGHT; 2];
        let graph = PLAN.filter_graph(&["i00000.jpg".into(), "i00001.png".into()], &upright);
        assert!(graph.starts_with("movie=i00000.jpg,trim=end_frame=1,scale=1280:720:force_original_aspect_ratio=decrease"), "{graph}");
        assert!(graph.contains("pad=1280:720:(ow-iw)/2:(oh-ih)/2,setsar=1,format=yuv420p[v1];"));
        assert!(graph.ends_with(
            "[v0][v1]concat=n=2:v=1:a=0,setpts=N*2/TB,tpad=stop_mode=clone:stop_duration=2,fps=5[out]\n"
        ));
    }

    #[test]
    fn args_cut_at_the_exact_frame_count() {
        let args = PLAN.ffmpeg_args(3, Path::new("g.txt"), Path::new("/o/v.mp4"));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = args.iter().position(|a| a == "-frames:v").unwrap();
        assert_eq!(args[at + 1], "30");
        assert_eq!(args.last().unwrap(), "/o/v.mp4");
        assert!(args.windows(2).any(|w| w == ["-movflags", "+faststart"]));
        assert!(args.windows(2).any(|w| w == ["-progress", "pipe:1"]));
    }

    #[test]
    fn frames_written_is_the_last_progress_blocks() {
        let progress =
            "frame=1\nfps=0.00\nprogress=continue\nframe=10\nspeed=68.1x\nprogress=end\n";
        assert_eq!(frames_written(progress), Some(10));
        assert_eq!(frames_written("frame=0\nprogress=end\n"), Some(0));
        assert_eq!(frames_written(""), None);
    }

    #[test]
    fn a_culprit_replaces_the_graphs_stderr() {
        let culprit = Culprit {
            number: 2,
            url: "http://h/b.png".into(),
            words: "[png @ 0x1] chunk too big".into(),
        };
        let short = |culprit| EncodeError::ShortVideo {
            wrote: 0,
            planned: 10,
            stderr: "Error while filtering".into(),
            culprit,
        };
        assert_eq!(
            short(Some(culprit)).to_string(),
            "ffmpeg wrote 0 of 10 frames: image 2 (http://h/b.png): [png @ 0x1] chunk too big"
        );
        assert_eq!(
            short(None).to_string(),
            "ffmpeg wrote 0 of 10 frames: Error while filtering"
        );
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        assert_eq!(stderr_tail("a\n\nb\nc\nd\ne\n"), "b | c | d | e");
    }
}
