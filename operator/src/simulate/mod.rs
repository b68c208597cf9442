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

/// Writes the run's plots into `dir` as `<name>-queue.svg` and `<name>-workers.svg`.
pub fn write_svgs(report: &Report, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let queue = dir.join(format!("{}-queue.svg", report.name));
    std::fs::write(&queue, svg::queue_depth(&report.name, &report.samples))?;
    let workers = dir.join(format!("{}-workers.svg", report.name));
    std::fs::write(&workers, svg::workers(&report.name, &report.samples))?;
    Ok(vec![queue, workers])
}
