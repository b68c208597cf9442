//! `cloudkon-operator simulate CONFIG`: a time-warped, discrete-event
//! simulation of a pool and its batches that drives the operator's and the
//! worker's own decision code — bundle cuts (`Bundler`, `sizing`), the
//! metered window (`window::meter`), fair share (`ShareGuard::take`), the
//! scaler (`ScaleMemory::decide`, `scale::keep_busy`), the collector's
//! receives (`batch_runner::result_receives`) and the worker's
//! `bundles_wanted` — against simulated SQS, DynamoDB and workers. See `engine` for the loop, `runner`
//! and `worker` for the simulated processes, `queue` for SQS and the ledger.

pub mod config;
pub mod dist;
pub mod engine;
pub mod queue;
pub mod report;
pub mod runner;
pub mod svg;
pub mod worker;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Instant;

pub use config::SimConfig;
pub use report::Report;

/// Runs one simulation to its end.
pub fn simulate(config: &SimConfig) -> Report {
    let started = Instant::now();
    let mut sim = engine::Sim::new(config);
    sim.run();
    let mut report = Report::from_sim(&sim, config);
    // The report's own figures count (the list-schedule bound replays every
    // task): the target is the whole run's.
    report.wall = started.elapsed();
    report
}

/// Writes the run's plots into `dir` as `<stem>-queue.svg` and
/// `<stem>-workers.svg` (`stem` from [`plot_stems`]).
pub fn write_svgs(
    report: &Report,
    dir: &Path,
    stem: &str,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    let queue = dir.join(format!("{stem}-queue.svg"));
    std::fs::write(&queue, svg::queue_depth(&report.name, &report.samples))?;
    let workers = dir.join(format!("{stem}-workers.svg"));
    std::fs::write(&workers, svg::workers(&report.name, &report.samples))?;
    Ok(vec![queue, workers])
}

/// Makes `dir` if it is missing and checks that a file can be written in
/// it, before any run: a long run is not lost to a plot that cannot be
/// written at its end.
pub fn check_svg_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tempfile::NamedTempFile::new_in(dir).map(drop)
}

/// The file names' stems of the runs' plots, one per report name, in
/// order: a name's characters other than letters, digits, `.`, `_` and `-`
/// become `-` (a name such as `runs/a` or `../x` stays inside the plots'
/// directory), a leading `.` too (no hidden file), an empty name `run`, and a stem taken already gets `-2`, `-3`…
/// (two configs `a/x.yaml` and `b/x.yaml` are both named `x`).
pub fn plot_stems<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut stems: Vec<String> = Vec::new();
    for name in names {
        let mut base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if base.is_empty() {
            base.push_str("run");
        } else if base.starts_with('.') {
            // Not a hidden file.
            base.replace_range(..1, "-");
        }
        let mut stem = base.clone();
        let mut n = 1;
        while stems.contains(&stem) {
            n += 1;
            stem = format!("{base}-{n}");
        }
        stems.push(stem);
    }
    stems
}

#[cfg(test)]
mod plot_tests {
    use super::*;

    #[test]
    fn plot_stems_stay_in_the_directory_and_are_one_per_run() {
        let stems = plot_stems(["big", "runs/a", "../x", "x", "..", "x", "", "a b"]);
        assert_eq!(
            stems,
            ["big", "runs-a", "-.-x", "x", "-.", "x-2", "run", "a-b"]
        );
        assert!(
            stems
                .iter()
                .all(|s| !s.contains('/') && !s.starts_with('.'))
        );
    }

    #[test]
    fn a_plots_directory_that_cannot_be_written_is_found_before_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        check_svg_dir(&new).unwrap();
        assert!(new.is_dir());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(check_svg_dir(&file).is_err());
        assert!(check_svg_dir(&file.join("sub")).is_err());
    }
}
