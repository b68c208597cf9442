//! Generated workloads for the seed experiments (`cloudkon workload ...`).

use std::io::{self, Write};

/// Writes `count` lines of `sleep ms`.
pub fn write_sleep_workload(
    out: &mut (impl Write + ?Sized),
    ms: u64,
    count: u64,
) -> io::Result<()> {
    let line = format!("sleep {ms}\n");
    for _ in 0..count {
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// Writes `count` lines of `run <argv>`, quoted so that the parser gives `argv` back.
/// `{i}` in an argument is replaced by the task's ordinal, for parameter sweeps.
pub fn write_run_workload(
    out: &mut (impl Write + ?Sized),
    argv: &[String],
    count: u64,
) -> io::Result<()> {
    let templated = argv.iter().any(|a| a.contains("{i}"));
    let fixed = format!("run {}\n", shell_words::join(argv));
    for i in 0..count {
        if templated {
            let i = i.to_string();
            let args: Vec<String> = argv.iter().map(|a| a.replace("{i}", &i)).collect();
            writeln!(out, "run {}", shell_words::join(&args))?;
        } else {
            out.write_all(fixed.as_bytes())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskSpec;
    use crate::workload::WorkloadReader;

    #[test]
    fn generated_sleep_workload_parses_back() {
        let mut buf = Vec::new();
        write_sleep_workload(&mut buf, 250, 3).unwrap();
        let tasks: Vec<_> = WorkloadReader::new(buf.as_slice(), "gen")
            .map(Result::unwrap)
            .collect();
        assert_eq!(tasks.len(), 3);
        assert!(tasks.iter().all(|t| t.spec == TaskSpec::Sleep { ms: 250 }));
    }

    #[test]
    fn generated_run_workload_round_trips_awkward_arguments() {
        let argv: Vec<String> = ["sh", "-c", "echo \"$1\" 'x y'", "--", "item-{i}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut buf = Vec::new();
        write_run_workload(&mut buf, &argv, 2).unwrap();
        let tasks: Vec<_> = WorkloadReader::new(buf.as_slice(), "gen")
            .map(Result::unwrap)
            .collect();
        let TaskSpec::Run { program, args, .. } = &tasks[1].spec else {
            panic!("not run")
        };
        assert_eq!(program, "sh");
        assert_eq!(args, &["-c", "echo \"$1\" 'x y'", "--", "item-1"]);
    }
}
