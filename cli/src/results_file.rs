//! The results file of `cloudkon run` and `cloudkon submit`: JSON Lines,
//! created before anything runs and flushed as part of the run.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use cloudkon_core::TaskResult;

/// The results file: JSON Lines, shared by whoever collects results.
#[derive(Clone)]
pub struct ResultsWriter(Arc<Mutex<BufWriter<File>>>);

impl ResultsWriter {
    pub fn write(&mut self, result: &TaskResult) -> std::io::Result<()> {
        let mut w = self.0.lock().expect("results writer lock");
        serde_json::to_writer(&mut *w, result)?;
        w.write_all(b"\n")
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
        Ok(ResultsWriter(Arc::new(Mutex::new(
            BufWriter::with_capacity(1 << 20, file),
        ))))
    })
    .transpose()
}

/// Flushing can fail too (a full disk): that is a failed run, not a footnote.
pub fn flush_results(writer: Option<&ResultsWriter>) -> std::io::Result<()> {
    writer.map_or(Ok(()), ResultsWriter::flush)
}
