//! The results file of `cloudkon run` and `cloudkon submit`: JSON Lines,
//! created before anything runs and flushed as part of the run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use cloudkon_core::TaskResult;

/// How long a result may wait in memory: a killed run (kill -9, OOM, a
/// dropped ssh) keeps all but the last second of its results, and `tail -f`
/// follows the run, for a write a second at most.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The results file: JSON Lines, shared by whoever collects results.
#[derive(Clone)]
pub struct ResultsWriter(Arc<Mutex<Output>>);

struct Output {
    file: BufWriter<File>,
    /// Written to since the last flush.
    dirty: bool,
    /// A failed periodic flush, told at the next write or the final flush.
    error: Option<std::io::Error>,
}

impl Output {
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.dirty = false;
        self.file.flush()
    }
}

impl ResultsWriter {
    pub fn write(&mut self, result: &TaskResult) -> std::io::Result<()> {
        let mut out = self.0.lock().expect("results writer lock");
        if let Some(e) = out.error.take() {
            return Err(e);
        }
        out.dirty = true;
        serde_json::to_writer(&mut out.file, result)?;
        out.file.write_all(b"\n")
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.lock().expect("results writer lock").flush()
    }
}

/// Creates the results file before anything runs, so that a bad path costs nothing.
pub fn create_results(path: Option<&Path>) -> Result<Option<ResultsWriter>> {
    path.map(|path| {
        let file = File::create(path)
            .with_context(|| format!("cannot create results file {}", path.display()))?;
        let out = Arc::new(Mutex::new(Output {
            file: BufWriter::with_capacity(1 << 20, file),
            dirty: false,
            error: None,
        }));
        start_flusher(Arc::downgrade(&out))?;
        Ok(ResultsWriter(out))
    })
    .transpose()
}

/// Flushes what was written every [`FLUSH_EVERY`], until the writer is dropped.
fn start_flusher(out: Weak<Mutex<Output>>) -> Result<()> {
    std::thread::Builder::new()
        .name("cloudkon-results-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(out) = out.upgrade() else { return };
                let mut out = out.lock().expect("results writer lock");
                if out.dirty
                    && out.error.is_none()
                    && let Err(e) = out.flush()
                {
                    out.error = Some(e);
                }
            }
        })
        .context("cannot start the results file's flusher")?;
    Ok(())
}

/// Flushing can fail too (a full disk): that is a failed run, not a footnote.
pub fn flush_results(writer: Option<&ResultsWriter>) -> std::io::Result<()> {
    writer.map_or(Ok(()), ResultsWriter::flush)
}
