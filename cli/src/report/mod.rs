//! `cloudkon report`: a results file (JSON Lines, as `cloudkon run --output`
//! and `cloudkon submit -o` write it) as one self-contained HTML page, and as a
//! Chrome trace.

mod html;
mod model;
mod trace;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use cloudkon_core::TaskResult;
use tempfile::NamedTempFile;

use crate::exit;
use crate::same_file::same_file;

/// Malformed lines printed before the count of the rest.
const ERRORS_SHOWN: usize = 20;

#[derive(Debug, clap::Args)]
#[command(
    verbatim_doc_comment,
    after_help = "Examples:
  cloudkon run sweep.txt -o results.jsonl
  cloudkon report results.jsonl -o report.html                  # open it in any browser
  cloudkon report results.jsonl -o report.html --trace trace.json
  # trace.json opens in https://ui.perfetto.dev (Open trace file) or chrome://tracing

The page: counts, a timeline of the tasks per worker slot, throughput over
time, histograms of run time, queue wait and end-to-end latency, and the
failures (by reason, and the first 1,000 one by one). It needs no network: its
styles, script and charts are inside it. Up to 10,000 tasks the timeline draws
each task; past that it draws how busy each slot was in 300 time steps (and
more than 128 slots share rows), so the page stays small for any number of
results: at most about 1.4 MB, when everything fails with long reasons.

A malformed line stops the report: each one is named as FILE:LINE (the first
20 and a count of the rest), nothing is written, and the exit status is 2.
Blank lines are skipped, and so is a last line cut short (no newline at its
end, as a run stopped or still running leaves it), with a warning. The
outputs cannot be the results file itself."
)]
pub struct ReportArgs {
    /// The results file: JSON Lines, one task's result a line.
    pub results: PathBuf,

    /// Write the HTML report to this file.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Write the tasks as a Chrome trace (JSON) to this file: one event per
    /// task, a process per worker, a thread per slot.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// The page's title [default: the results file's name].
    #[arg(long)]
    pub title: Option<String>,
}

pub fn run(args: ReportArgs) -> Result<ExitCode> {
    if args.output.is_none() && args.trace.is_none() {
        say!(
            "error: nothing to write: give -o report.html, --trace trace.json, or both \
             (see `cloudkon report --help`)"
        );
        return Ok(ExitCode::from(exit::USAGE));
    }
    // Before any reading: an output that cannot be renamed into place would
    // fail only once the whole results file has been read.
    let not_files = [("-o", &args.output), ("--trace", &args.trace)]
        .into_iter()
        .find_map(|(flag, path)| not_a_file(flag, path.as_deref()?));
    if let Some(message) = not_files {
        say!("error: {message}");
        return Ok(ExitCode::from(exit::USAGE));
    }
    let began = Instant::now();
    let source = args.results.display().to_string();
    let file =
        File::open(&args.results).with_context(|| format!("cannot open results file {source}"))?;
    let input = file
        .metadata()
        .with_context(|| format!("cannot read results file {source}"))?;
    if let Some(message) = output_is_input(&input, &args).or_else(|| page_is_trace(&args)) {
        say!("error: {message}");
        return Ok(ExitCode::from(exit::USAGE));
    }
    // Each output is written beside its final name and renamed when the
    // whole file has been read and both are written: a malformed line, or an
    // output that cannot be written, leaves neither behind. Both are created
    // first, so that a bad path costs no reading.
    let page_file = args.output.as_deref().map(temp_beside).transpose()?;
    let mut trace = match &args.trace {
        Some(path) => Some(trace::TraceWriter::new(BufWriter::with_capacity(
            1 << 20,
            temp_beside(path)?,
        ))?),
        None => None,
    };
    let mut collector = model::Collector::new();
    let mut errors = Vec::new();
    let mut error_count = 0u64;
    let reader = BufReader::with_capacity(1 << 20, file);
    let cut_short = read_results(reader, &source, |line, parsed| {
        match parsed {
            Ok(result) => {
                collector.add(&result);
                if let Some(trace) = &mut trace {
                    trace.add(&result).with_context(|| {
                        format!("cannot write the trace to {}", display(&args.trace))
                    })?;
                }
            }
            Err(e) => {
                error_count += 1;
                if errors.len() < ERRORS_SHOWN {
                    errors.push(format!("{source}:{line}: {e}"));
                }
            }
        }
        Ok(())
    })?;
    if let Some((line, e)) = cut_short {
        say!(
            "warning: {source}:{line}: skipped: the last line is cut short (no newline at \
             its end, as a run stopped or still writing leaves it): {e}"
        );
    }

    if error_count > 0 {
        for e in &errors {
            say!("error: {e}");
        }
        if error_count > errors.len() as u64 {
            say!(
                "error: and {} more malformed lines",
                error_count - errors.len() as u64
            );
        }
        let lines = if error_count == 1 { "line" } else { "lines" };
        say!("nothing was written: {error_count} malformed {lines} in {source}");
        return Ok(ExitCode::from(exit::USAGE));
    }
    if collector.tasks() == 0 {
        say!("error: {source}: no results in this file");
        return Ok(ExitCode::from(exit::USAGE));
    }
    let tasks = collector.tasks();
    let trace = match (&args.trace, trace) {
        (Some(path), Some(trace)) => Some(
            trace
                .finish()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .with_context(|| format!("cannot write the trace to {}", path.display()))?,
        ),
        _ => None,
    };
    let page = match (&args.output, page_file) {
        (Some(path), Some(mut temp)) => {
            let title = args.title.clone().unwrap_or_else(|| {
                let name = args
                    .results
                    .file_name()
                    .map_or(source.clone(), |n| n.to_string_lossy().into_owned());
                format!("CloudKon report: {name}")
            });
            let page = html::render(&collector.finish(&source), &title)?;
            temp.write_all(page.as_bytes())
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
            Some((temp, page.len()))
        }
        _ => None,
    };
    // Both written: now both renamed into place.
    let page_len = match (&args.output, page) {
        (Some(path), Some((temp, len))) => {
            persist(temp, path)?;
            Some((path, len))
        }
        _ => None,
    };
    if let (Some(path), Some(temp)) = (&args.trace, trace) {
        persist(temp, path)?;
        println!("trace in {} ({tasks} tasks)", path.display());
    }
    if let Some((path, len)) = page_len {
        println!(
            "report in {} ({tasks} tasks, {} KiB)",
            path.display(),
            len.div_ceil(1024)
        );
    }
    tracing::info!(tasks, took = ?began.elapsed(), "report written");
    Ok(ExitCode::SUCCESS)
}

/// An output (`-o`, `--trace`) that is the results file by any name (the
/// same file, a hard or symbolic link): the report would be renamed over the
/// results it is made from.
fn output_is_input(input: &std::fs::Metadata, args: &ReportArgs) -> Option<String> {
    [("-o", &args.output), ("--trace", &args.trace)]
        .into_iter()
        .find_map(|(flag, path)| {
            let path = path.as_deref()?;
            let out = std::fs::metadata(path).ok()?;
            same_file(&out, input).then(|| {
                format!(
                    "{flag} {}: that is the results file {} itself, which it would \
                     replace; write to another file",
                    path.display(),
                    args.results.display()
                )
            })
        })
}

/// `-o` and `--trace` naming one file (by name, or as links to one file):
/// the page would be renamed over the trace.
fn page_is_trace(args: &ReportArgs) -> Option<String> {
    let (page, trace) = (args.output.as_deref()?, args.trace.as_deref()?);
    let same_name = std::path::absolute(page).ok()? == std::path::absolute(trace).ok()?;
    let same_file = match (std::fs::metadata(page), std::fs::metadata(trace)) {
        (Ok(a), Ok(b)) => same_file(&a, &b),
        _ => false,
    };
    (same_name || same_file).then(|| {
        format!(
            "-o and --trace both name {}: the page would replace the trace; give each its own file",
            page.display()
        )
    })
}

/// Calls `each` with every non-blank line's number (1-based) and its result,
/// or why it is not one. A last line with no newline that does not parse is
/// not passed on but returned, with why: a run stopped or still writing
/// leaves its last result half written, and the results before it are good.
fn read_results(
    mut reader: impl BufRead,
    source: &str,
    mut each: impl FnMut(u64, std::result::Result<TaskResult, String>) -> Result<()>,
) -> Result<Option<(u64, String)>> {
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {source} after line {number}"))?;
        if read == 0 {
            return Ok(None);
        }
        number += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let parsed = serde_json::from_slice(text).map_err(|e| describe(&e));
        if let Err(e) = &parsed
            && line.last() != Some(&b'\n')
        {
            return Ok(Some((number, e.clone())));
        }
        each(number, parsed)?;
    }
}

/// serde's message without its "at line 1 column N" (a line is one JSON
/// value: the column is what helps).
fn describe(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    format!("column {}: {message}", e.column())
}

fn display(path: &Option<PathBuf>) -> String {
    path.as_deref()
        .map_or(String::new(), |p| p.display().to_string())
}

// ---------------------------------------------- Outputs replaced whole --
// Also `cloudkon workload -o`'s: an output is written beside its final name
// and renamed over it once whole, so that a failure leaves the file as it was.

/// Why `path`, given as `flag`, cannot be an output replaced whole: it names a
/// directory, or an existing thing that is not a regular file (a device, a
/// pipe), which a finished output must not be renamed over.
pub(crate) fn not_a_file(flag: &str, path: &Path) -> Option<String> {
    let why = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => "that is a directory",
        Ok(meta) if !meta.is_file() => "that is not a regular file",
        Ok(_) => return None,
        // `out/` that does not exist yet is a directory's name too.
        Err(_) if path.as_os_str().as_encoded_bytes().ends_with(b"/") => "that names a directory",
        Err(_) => return None,
    };
    Some(format!(
        "{flag} {}: {why}; give the path of a file to write",
        path.display()
    ))
}

/// The file an output replaces: through a symbolic link, the file it names
/// (as opening it for writing would), not the link.
fn replaced(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_symlink() => std::fs::canonicalize(path).unwrap_or(path.into()),
        _ => path.into(),
    }
}

/// A new file in the directory of the file `path` replaces, to write the
/// output in and [`persist`] it as `path` once whole.
pub(crate) fn temp_beside(path: &Path) -> Result<NamedTempFile> {
    let target = replaced(path);
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Readable as any new file would be (the umask applies), not 0600.
    let temp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create {}", path.display()))?;
    crate::temp_outputs::writing(temp.path());
    Ok(temp)
}

/// Renames `temp`, written whole, over `path` (the file it names, if a link),
/// with the permissions of the file it replaces.
pub(crate) fn persist(temp: NamedTempFile, path: &Path) -> Result<()> {
    let target = replaced(path);
    if let Ok(meta) = std::fs::metadata(&target) {
        temp.as_file()
            .set_permissions(meta.permissions())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let written = temp.path().to_path_buf();
    let persisted = temp.persist(&target);
    crate::temp_outputs::done(&written);
    persisted.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"batch":"b","id":7,"attempt":1,"status":"succeeded","worker":"local/0","submitted":"2026-11-30T12:42:38.590310Z","started":"2026-11-30T12:42:38.591044Z","finished":"2026-11-30T12:42:38.601329Z"}"#;

    type Lines = Vec<(u64, std::result::Result<u64, String>)>;

    fn read(text: &str) -> (Lines, Option<(u64, String)>) {
        let mut out = Vec::new();
        let cut = read_results(text.as_bytes(), "r.jsonl", |n, r| {
            out.push((n, r.map(|r| r.id)));
            Ok(())
        })
        .unwrap();
        (out, cut)
    }

    fn lines(text: &str) -> Lines {
        let (out, cut) = read(text);
        assert_eq!(cut, None);
        out
    }

    #[test]
    fn a_last_line_cut_short_is_returned_apart_and_only_the_last() {
        let (got, cut) = read(&format!("{GOOD}\n{GOOD}\n{{\"batch\":\"b\",\"id\":"));
        assert_eq!(got, [(1, Ok(7)), (2, Ok(7))]);
        let (line, e) = cut.expect("the cut line, apart");
        assert_eq!(line, 3);
        assert!(e.contains("EOF"), "{e}");
        // With its newline, it was written whole: malformed, as any other.
        let (got, cut) = read(&format!("{GOOD}\n{{\"batch\":\"b\",\"id\":\n"));
        assert_eq!(cut, None);
        assert_eq!(got.len(), 2);
        assert!(got[1].1.is_err());
        // A good last line with no newline is a result; a bad line before it is malformed.
        let (got, cut) = read(&format!("not json\n{GOOD}"));
        assert_eq!((got.len(), cut), (2, None));
        assert!(got[0].1.is_err());
    }

    #[test]
    fn lines_are_numbered_blank_ones_skipped_and_errors_say_where() {
        let good = GOOD;
        let text = format!("{good}\n\n{{\"id\":1}}\r\nnot json\n{good}");
        let got = lines(&text);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (1, Ok(7)));
        assert_eq!(got[1].0, 3);
        let e = got[1].1.as_ref().unwrap_err();
        assert!(
            e.starts_with("column ") && e.contains("missing field"),
            "{e}"
        );
        assert!(!e.contains("at line"), "{e}");
        assert_eq!(got[2].0, 4);
        assert_eq!(got[3], (5, Ok(7)));
    }
}
