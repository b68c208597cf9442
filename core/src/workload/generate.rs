//! Generated workloads for the seed experiments (`cloudkon workload ...`).

use std::io::{self, Write};

use crate::task::TaskSpec;

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
    let fixed = run_line(argv)?;
    for i in 0..count {
        if templated {
            let i = i.to_string();
            let args: Vec<String> = argv.iter().map(|a| a.replace("{i}", &i)).collect();
            out.write_all(run_line(&args)?.as_bytes())?;
        } else {
            out.write_all(fixed.as_bytes())?;
        }
    }
    Ok(())
}

/// One task's line: `run <argv>`, or its JSON form when the parser would not
/// give `argv` back from it (a control character, which quoting leaves as it
/// is; Unicode whitespace, which it leaves unquoted and the parser trims).
fn run_line(argv: &[String]) -> io::Result<String> {
    let (program, args) = argv
        .split_first()
        .filter(|(program, _)| !program.is_empty())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "run needs a program name"))?;
    let spec = TaskSpec::Run {
        program: program.clone(),
        args: args.to_vec(),
        expected_ms: None,
    };
    let text = format!("run {}\n", shell_words::join(argv));
    if !argv.iter().any(|a| a.contains(char::is_control))
        && matches!(super::parse_line(&text), Ok(Some((ref parsed, None))) if *parsed == spec)
    {
        return Ok(text);
    }
    let mut line = serde_json::to_string(&spec).map_err(io::Error::other)?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
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

        // Control characters, a newline first, templated or not.
        for argv in [
            vec!["printf", "a\nb"],
            vec!["printf", "{i}\r\n\t\u{7}", "#x", "{y}"],
            vec!["a\nprogram"],
            // Unicode whitespace: shell quoting leaves it bare, the parser trims it.
            vec!["printf", "[%s]", "x\u{a0}"],
            vec!["\u{2003}", "y"],
        ] {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            let mut buf = Vec::new();
            write_run_workload(&mut buf, &argv, 2).unwrap();
            let tasks: Vec<_> = WorkloadReader::new(buf.as_slice(), "gen")
                .map(Result::unwrap)
                .collect();
            assert_eq!(tasks.len(), 2, "{}", String::from_utf8_lossy(&buf));
            let TaskSpec::Run { program, args, .. } = &tasks[1].spec else {
                panic!("not run")
            };
            let expected: Vec<String> = argv.iter().map(|a| a.replace("{i}", "1")).collect();
            assert_eq!(program, &expected[0]);
            assert_eq!(args, &expected[1..]);
        }
    }

    #[test]
    fn a_run_without_a_program_is_refused_not_written() {
        for argv in [vec![], vec![String::new(), "x".to_string()]] {
            let mut buf = Vec::new();
            let err = write_run_workload(&mut buf, &argv, 1).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(buf.is_empty());
        }
    }
}
