//! Parsing of one workload line.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::task::{AnimotoSpec, TaskSpec};

/// An Animoto video's bounds: a side (8K), frames a second, seconds an image.
pub const MAX_RESOLUTION_SIDE: u32 = 8192;
const MAX_FRAME_RATE: u32 = 120;
const MAX_SECONDS_PER_IMAGE: u32 = 3600;

/// URL schemes an Animoto input may use.
const IMAGE_SCHEMES: [&str; 4] = ["http://", "https://", "s3://", "file://"];

/// Parses one line: `Ok(None)` for a blank or comment line, else the task and its
/// optional timeout; the error says what is wrong (the caller adds file and line).
pub fn parse_line(line: &str) -> Result<Option<(TaskSpec, Option<Duration>)>, String> {
    if !is_task_line(line) {
        return Ok(None);
    }
    let line = line.trim();
    if line.starts_with('{') {
        return parse_json(line).map(Some);
    }
    let (verb, rest) = line
        .split_once(|c: char| c.is_ascii_whitespace())
        .map_or((line, ""), |(v, r)| (v, r.trim_start()));
    let spec = match verb {
        "sleep" => parse_sleep(rest)?,
        "run" => parse_run(rest)?,
        "animoto" => parse_animoto(rest)?,
        other => {
            return Err(format!(
                "unknown task kind `{}` (expected `sleep`, `run`, `animoto` or a JSON object)",
                shown(other)
            ));
        }
    };
    Ok(Some((spec, None)))
}

/// Input quoted in a message, with what a terminal would not show (a
/// byte-order mark, a control character, Unicode whitespace) escaped.
fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = c != ' ' && (c.is_whitespace() || c.escape_debug().next() == Some('\\'));
        if hidden && c != '\\' && c != '"' && c != '\'' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a line holds a task (else it is blank or a comment).
pub fn is_task_line(line: &str) -> bool {
    let line = line.trim();
    !(line.is_empty() || line.starts_with('#'))
}

fn parse_sleep(rest: &str) -> Result<TaskSpec, String> {
    let mut words = rest.split_ascii_whitespace();
    let (Some(ms), None) = (words.next(), words.next()) else {
        return Err(if rest.is_empty() {
            "sleep needs a duration in milliseconds, e.g. `sleep 100`".to_string()
        } else {
            format!(
                "sleep takes one argument (milliseconds), got `{}`",
                shown(rest)
            )
        });
    };
    let ms = ms.parse::<u64>().map_err(|_| {
        format!(
            "sleep takes a whole number of milliseconds, got `{}`",
            shown(ms)
        )
    })?;
    Ok(TaskSpec::Sleep { ms })
}

fn parse_run(rest: &str) -> Result<TaskSpec, String> {
    let mut words =
        shell_words::split(rest).map_err(|e| format!("run: cannot split the command line: {e}"))?;
    if words.is_empty() {
        return Err("run needs a program, e.g. `run echo hello`".to_string());
    }
    let program = words.remove(0);
    run_spec(program, words, None)
}

fn run_spec(
    program: String,
    args: Vec<String>,
    expected_ms: Option<u64>,
) -> Result<TaskSpec, String> {
    if program.is_empty() {
        return Err("run: the program name is empty".to_string());
    }
    if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
        return Err("run: arguments cannot contain NUL bytes".to_string());
    }
    Ok(TaskSpec::Run {
        program,
        args,
        expected_ms,
    })
}

fn parse_animoto(rest: &str) -> Result<TaskSpec, String> {
    let urls: Vec<String> = rest.split_ascii_whitespace().map(str::to_owned).collect();
    animoto_spec(AnimotoSpec {
        urls,
        seconds_per_image: None,
        resolution: None,
        frame_rate: None,
        output: None,
    })
}

fn animoto_spec(spec: AnimotoSpec) -> Result<TaskSpec, String> {
    if spec.urls.is_empty() {
        return Err("animoto needs at least one image URL".to_string());
    }
    if let Some(bad) = spec.urls.iter().find(|u| {
        !IMAGE_SCHEMES
            .iter()
            .any(|s| u.starts_with(s) && u.len() > s.len())
    }) {
        return Err(format!(
            "animoto: unsupported image URL `{}` (use http://, https://, s3:// or file://)",
            shown(bad)
        ));
    }
    // A file:// URL names an absolute path (file:///dir/x.jpg); the
    // executor reads no other.
    if let Some(bad) = spec.urls.iter().find(|u| {
        u.strip_prefix("file://")
            .is_some_and(|rest| !rest.starts_with('/') && !rest.starts_with("localhost/"))
    }) {
        return Err(format!(
            "animoto: `{}` names no absolute path: a file:// URL is file:///dir/image.jpg",
            shown(bad)
        ));
    }
    // Where the video goes: a directory, or s3://BUCKET/PREFIX (what the
    // executor checks before its downloads, said here instead of by each
    // task failing).
    if let Some(output) = &spec.output
        && let Err(e) = crate::aws::check_video_place(output)
    {
        return Err(format!("animoto: output {}", shown(&e.to_string())));
    }
    // Bounds that fail here, not after every image is downloaded.
    if let Some(secs) = spec.seconds_per_image
        && !(1..=MAX_SECONDS_PER_IMAGE).contains(&secs)
    {
        return Err(format!(
            "animoto: seconds_per_image must be 1 to {MAX_SECONDS_PER_IMAGE}, got {secs}"
        ));
    }
    if let Some(rate) = spec.frame_rate
        && !(1..=MAX_FRAME_RATE).contains(&rate)
    {
        return Err(format!(
            "animoto: frame_rate must be 1 to {MAX_FRAME_RATE}, got {rate}"
        ));
    }
    if let Some(res) = &spec.resolution
        && parse_resolution(res).is_none()
    {
        return Err(format!(
            "animoto: resolution must be WIDTHxHEIGHT with even numbers up to {MAX_RESOLUTION_SIDE}, e.g. 1920x1080, got `{}`",
            shown(res)
        ));
    }
    Ok(TaskSpec::Animoto(spec))
}

/// An Animoto resolution, `WIDTHxHEIGHT`: even numbers (H.264's 4:2:0
/// halves both) from 2 to [`MAX_RESOLUTION_SIDE`]. The workload's check and the
/// executor's plan both read it here.
pub fn parse_resolution(text: &str) -> Option<(u32, u32)> {
    let (w, h) = text.split_once('x')?;
    let (w, h) = (w.parse::<u32>().ok()?, h.parse::<u32>().ok()?);
    let side = |n: u32| (2..=MAX_RESOLUTION_SIDE).contains(&n) && n.is_multiple_of(2);
    (side(w) && side(h)).then_some((w, h))
}

/// A JSON Lines task: `{"kind": ..., <kind's fields>, "timeout_ms": N}`.
fn parse_json(line: &str) -> Result<(TaskSpec, Option<Duration>), String> {
    let UniqueKeys(mut object) = serde_json::from_str(line).map_err(json_error)?;
    let timeout = match object.remove("timeout_ms") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|ms| ms > 0) => {
            n.as_u64().map(Duration::from_millis)
        }
        Some(other) => {
            return Err(format!(
                "timeout_ms must be a positive whole number, got {other}"
            ));
        }
    };
    if !object.contains_key("kind") {
        return Err("a JSON task needs a `kind` (`sleep`, `run` or `animoto`)".to_string());
    }
    let spec: TaskSpec =
        serde_json::from_value(Value::Object(object)).map_err(|e| format!("invalid task: {e}"))?;
    Ok((check_spec(spec)?, timeout))
}

/// serde_json's words, with the column: its "line 1" is the task line's,
/// not the file's, which the caller names.
fn json_error(e: serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let words = text.strip_suffix(&suffix).unwrap_or(&text);
    if e.line() == 1 && e.column() > 0 {
        format!("invalid JSON at column {}: {words}", e.column())
    } else {
        format!("invalid JSON: {words}")
    }
}

/// A JSON object whose keys each appear once: a `Map` keeps the last of
/// two, and `{"ms":1,"ms":2}` would be read silently as 2.
struct UniqueKeys(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut map = Map::new();
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "`{key}` is given twice"
                        )));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueKeys(map))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A task built by other means (a TaskBatch's inline task) checked by the
/// rules of a workload line: one set of rules whatever the syntax.
pub fn check_spec(spec: TaskSpec) -> Result<TaskSpec, String> {
    match spec {
        TaskSpec::Run {
            program,
            args,
            expected_ms,
        } => run_spec(program, args, expected_ms),
        TaskSpec::Animoto(a) => animoto_spec(a),
        sleep @ TaskSpec::Sleep { .. } => Ok(sleep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> TaskSpec {
        parse_line(line).unwrap().unwrap().0
    }

    fn err(line: &str) -> String {
        parse_line(line).unwrap_err()
    }

    fn run(program: &str, args: &[&str]) -> TaskSpec {
        TaskSpec::Run {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            expected_ms: None,
        }
    }

    #[test]
    fn blank_and_comment_lines_are_skipped() {
        for line in ["", "   ", "\t\r", "# x", "   #sleep 5"] {
            assert_eq!(parse_line(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn sleep_lines() {
        assert_eq!(ok("sleep 0"), TaskSpec::Sleep { ms: 0 });
        assert_eq!(ok("  sleep\t8000  \r"), TaskSpec::Sleep { ms: 8000 });
    }

    #[test]
    fn sleep_errors() {
        assert_eq!(
            err("sleep"),
            "sleep needs a duration in milliseconds, e.g. `sleep 100`"
        );
        assert_eq!(
            err("sleep -1"),
            "sleep takes a whole number of milliseconds, got `-1`"
        );
        assert_eq!(
            err("sleep 1.5"),
            "sleep takes a whole number of milliseconds, got `1.5`"
        );
        assert_eq!(
            err("sleep 1 2"),
            "sleep takes one argument (milliseconds), got `1 2`"
        );
        assert_eq!(
            err("sleep 99999999999999999999"),
            "sleep takes a whole number of milliseconds, got `99999999999999999999`"
        );
    }

    #[test]
    fn run_lines_split_like_a_shell_without_one() {
        assert_eq!(ok("run true"), run("true", &[]));
        assert_eq!(
            ok(r#"run convert "in put.png" 'a b' c\ d $HOME"#),
            run("convert", &["in put.png", "a b", "c d", "$HOME"])
        );
        assert_eq!(ok("run echo ''"), run("echo", &[""]));
    }

    #[test]
    fn run_errors() {
        assert_eq!(err("run"), "run needs a program, e.g. `run echo hello`");
        assert_eq!(err("run   "), "run needs a program, e.g. `run echo hello`");
        assert!(
            err(r#"run echo "unterminated"#).starts_with("run: cannot split the command line:")
        );
        assert_eq!(err("run '' x"), "run: the program name is empty");
    }

    #[test]
    fn animoto_lines() {
        let TaskSpec::Animoto(spec) = ok("animoto https://h/a.jpg s3://b/k.png file:///tmp/c.png")
        else {
            panic!("not animoto");
        };
        assert_eq!(spec.urls.len(), 3);
        assert_eq!(spec.resolution, None);
    }

    #[test]
    fn animoto_errors() {
        assert_eq!(err("animoto"), "animoto needs at least one image URL");
        assert_eq!(
            err("animoto https://h/a.jpg ftp://h/b.jpg"),
            "animoto: unsupported image URL `ftp://h/b.jpg` (use http://, https://, s3:// or file://)"
        );
        assert!(err("animoto http://").contains("unsupported image URL `http://`"));
        let json = |fields: &str| {
            err(&format!(
                r#"{{"kind":"animoto","urls":["s3://b/k.png"],{fields}}}"#
            ))
        };
        assert!(json(r#""resolution":"40000x40000""#).contains("up to 8192"));
        assert!(json(r#""resolution":"1920x1081""#).contains("even numbers"));
        assert_eq!(
            json(r#""frame_rate":0"#),
            "animoto: frame_rate must be 1 to 120, got 0"
        );
        assert_eq!(
            json(r#""frame_rate":1000"#),
            "animoto: frame_rate must be 1 to 120, got 1000"
        );
        assert_eq!(
            json(r#""seconds_per_image":86400"#),
            "animoto: seconds_per_image must be 1 to 3600, got 86400"
        );
        assert!(parse_line(r#"{"kind":"animoto","urls":["s3://b/k.png"],"resolution":"8192x4320","frame_rate":120,"seconds_per_image":3600}"#).is_ok());
        assert_eq!(
            err("animoto file://relative/img.jpg"),
            "animoto: `file://relative/img.jpg` names no absolute path: a file:// URL is file:///dir/image.jpg"
        );
        ok("animoto file://localhost/tmp/a.jpg file:///tmp/b.jpg");
        for output in [r#""""#, r#"" ""#, r#""ftp://x/y""#] {
            assert_eq!(
                json(&format!(r#""output":{output}"#)),
                format!(
                    "animoto: output `{}` is not a place for videos: give a local directory or s3://BUCKET/PREFIX",
                    output.trim_matches('"')
                )
            );
        }
        assert_eq!(
            json(r#""output":"s3://""#),
            "animoto: output `s3://` has no bucket name: expected s3://BUCKET/KEY"
        );
        for output in [
            r#""videos""#,
            r#""/srv/v""#,
            r#""s3://b""#,
            r#""s3://b/p/""#,
        ] {
            assert!(
                parse_line(&format!(
                    r#"{{"kind":"animoto","urls":["s3://b/k.png"],"output":{output}}}"#
                ))
                .is_ok(),
                "{output}"
            );
        }
    }

    #[test]
    fn unknown_kind() {
        assert_eq!(
            err("slep 10"),
            "unknown task kind `slep` (expected `sleep`, `run`, `animoto` or a JSON object)"
        );
    }

    #[test]
    fn json_lines() {
        assert_eq!(
            parse_line(r#"{"kind":"sleep","ms":5}"#),
            Ok(Some((TaskSpec::Sleep { ms: 5 }, None)))
        );
        assert_eq!(
            parse_line(r#" {"kind":"run","program":"echo","args":["a b"],"timeout_ms":1500} "#),
            Ok(Some((
                run("echo", &["a b"]),
                Some(Duration::from_millis(1500))
            )))
        );
        let TaskSpec::Animoto(spec) = ok(
            r#"{"kind":"animoto","urls":["https://h/1.jpg"],"seconds_per_image":2,"resolution":"1280x720"}"#,
        ) else {
            panic!("not animoto");
        };
        assert_eq!(spec.seconds_per_image, Some(2));
        let expected = ok(r#"{"kind":"run","program":"render","expected_ms":90000}"#);
        assert_eq!(
            expected,
            TaskSpec::Run {
                program: "render".into(),
                args: vec![],
                expected_ms: Some(90_000),
            }
        );
        assert_eq!(expected.declared_length(), Some(Duration::from_secs(90)));
        assert_eq!(
            expected.nominal_duration(),
            None,
            "an expectation is no ideal"
        );
    }

    #[test]
    fn resolutions_are_even_pairs_up_to_8k() {
        assert_eq!(parse_resolution("1280x720"), Some((1280, 720)));
        assert_eq!(parse_resolution("1281x720"), None);
        assert_eq!(parse_resolution("1280"), None);
        assert_eq!(parse_resolution("0x0"), None);
        assert_eq!(parse_resolution("8192x8192"), Some((8192, 8192)));
        assert_eq!(parse_resolution("8194x720"), None);
    }

    #[test]
    fn what_a_terminal_would_not_show_is_escaped_in_messages() {
        assert_eq!(
            err("\u{feff}sleep 5"),
            "unknown task kind `\\u{feff}sleep` (expected `sleep`, `run`, `animoto` or a JSON object)"
        );
        assert_eq!(
            err("sleep 5\u{2003}x"),
            "sleep takes a whole number of milliseconds, got `5\\u{2003}x`"
        );
        assert_eq!(
            err("slep 5"),
            "unknown task kind `slep` (expected `sleep`, `run`, `animoto` or a JSON object)"
        );
        assert_eq!(shown("é \"a\\b\" 'c'"), "é \"a\\b\" 'c'");
    }

    #[test]
    fn json_errors() {
        assert_eq!(
            err(r#"{"kind":"sleep","ms":5"#),
            "invalid JSON at column 22: EOF while parsing an object"
        );
        assert_eq!(
            err(r#"{"kind":"sleep","ms":1,"ms":2}"#),
            "invalid JSON at column 30: `ms` is given twice"
        );
        assert!(
            err(r#"{"kind":"sleep","ms":1,"timeout_ms":5,"timeout_ms":9}"#)
                .contains("`timeout_ms` is given twice")
        );
        assert_eq!(
            err(r#"{"ms":5}"#),
            "a JSON task needs a `kind` (`sleep`, `run` or `animoto`)"
        );
        assert!(err(r#"{"kind":"nap","ms":5}"#).contains("unknown variant `nap`"));
        assert!(err(r#"{"kind":"sleep","ms":-5}"#).starts_with("invalid task:"));
        assert!(
            err(r#"{"kind":"run","program":"x","expected_ms":-1}"#).starts_with("invalid task:")
        );
        assert!(err(r#"{"kind":"sleep","ms":5,"expected_ms":1}"#).contains("unknown field"));
        assert!(err(r#"{"kind":"sleep"}"#).contains("missing field `ms`"));
        assert!(err(r#"{"kind":"sleep","ms":5,"extra":1}"#).contains("unknown field `extra`"));
        assert_eq!(
            err(r#"{"kind":"sleep","ms":5,"timeout_ms":0}"#),
            "timeout_ms must be a positive whole number, got 0"
        );
        assert_eq!(
            err(r#"{"kind":"run","program":""}"#),
            "run: the program name is empty"
        );
        assert_eq!(
            err(r#"{"kind":"animoto","urls":[]}"#),
            "animoto needs at least one image URL"
        );
        assert!(
            err(r#"{"kind":"animoto","urls":["https://h/a"],"resolution":"1921x1080"}"#)
                .contains("even numbers")
        );
        assert_eq!(
            err(r#"{"kind":"animoto","urls":["https://h/a"],"frame_rate":0}"#),
            "animoto: frame_rate must be 1 to 120, got 0"
        );
        assert!(err("[1,2]").starts_with("unknown task kind"));
    }
}
