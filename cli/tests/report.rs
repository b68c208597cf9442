//! `cloudkon report`: results written by `cloudkon run` made into a page that
//! a real browser (headless Chromium, Debian's package: `scripts/test` installs
//! it) draws: the DOM after its script ran holds the expected counts, and a
//! screenshot shows the charts where the page says they are. Also the Chrome
//! trace, a big file's bounded page, and malformed lines.
//!
//! `CLOUDKON_REPORT_SCREENSHOT=FILE` keeps the small report's screenshot
//! (the README's picture: `docs/report.png`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cloudkon_core::{BatchId, Outcome, TaskResult, Timestamp};

fn cloudkon() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudkon"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

fn read_results(path: &Path) -> Vec<TaskResult> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ------------------------------------------------------------- Chromium --

/// Debian's `chromium`, or the test stops here saying what is missing.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CLOUDKON_CHROMIUM") {
        return path.into();
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            let path = dir.join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "chromium is not installed (not on PATH, CLOUDKON_CHROMIUM unset): the report's \
         browser test needs Debian's chromium package: `apt-get install chromium`, \
         or run scripts/test, which installs it"
    );
}

const WINDOW: (u32, u32) = (1280, 2400);

/// Runs headless Chromium on a local file with `what` (`--dump-dom`,
/// `--screenshot=FILE`). No traffic leaves the machine: background services
/// are off and every request that is not a file goes to a dead local proxy.
fn browse(page: &Path, what: &str, profile: &Path) -> Output {
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    std::fs::create_dir_all(profile).unwrap();
    let (stdout, stderr) = (profile.join("chromium.out"), profile.join("chromium.err"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox", // tests run as root in CI
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--force-color-profile=srgb",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--disable-domain-reliability",
            "--no-pings",
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            &format!("--user-data-dir={}", profile.display()),
            what,
            &url,
        ])
        .env("HOME", profile)
        .stdin(Stdio::null())
        // Files, not pipes: a DOM bigger than a pipe's buffer would block
        // Chromium while this waits for it to exit.
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("cannot start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("chromium {what} took over 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(
        Output {
            status: child.wait().unwrap(),
            stdout: std::fs::read(&stdout).unwrap(),
            stderr: std::fs::read(&stderr).unwrap(),
        },
        "chromium",
    )
}

/// The attributes of the element with `id` in a dumped DOM.
fn attributes(dom: &str, id: &str) -> HashMap<String, String> {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the DOM"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    let tag = &dom[start + 1..end];
    let mut out = HashMap::new();
    let mut rest = tag.split_once(' ').map_or("", |t| t.1);
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let value_end = eq + 2 + rest[eq + 2..].find('"').unwrap();
        out.insert(name, rest[eq + 2..value_end].replace("&amp;", "&"));
        rest = &rest[value_end + 1..];
    }
    out
}

fn attr(dom: &str, id: &str, name: &str) -> String {
    attributes(dom, id)
        .remove(name)
        .unwrap_or_else(|| panic!("#{id} has no {name} (the script did not fill it)"))
}

/// The body's attributes: the script sets `data-rendered`, or `data-error`.
fn assert_rendered(dom: &str) {
    let body = dom.find("<body").expect("a body");
    let tag = &dom[body..body + dom[body..].find('>').unwrap()];
    assert!(!tag.contains("data-error"), "the script failed: {tag}");
    assert!(tag.contains("data-rendered=\"true\""), "{tag}");
}

fn card(dom: &str, key: &str) -> String {
    let at = dom
        .find(&format!("data-key=\"{key}\""))
        .unwrap_or_else(|| panic!("no summary card {key}"));
    let tag = &dom[at..at + dom[at..].find('>').unwrap()];
    let v = tag.split("data-value=\"").nth(1).unwrap();
    v[..v.find('"').unwrap()].to_string()
}

struct Screenshot {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Screenshot {
    fn read(path: &Path) -> Self {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        assert!(channels >= 3, "{:?}", info.color_type);
        let rgb = buf[..info.buffer_size()]
            .chunks(channels)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        Self {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Pixels of the box `x,y,w,h` (a chart's `data-box`, inside its
    /// border) for which `pred` holds, and all of them.
    fn count(&self, bx: &str, pred: impl Fn([u8; 3]) -> bool) -> (usize, usize) {
        let b: Vec<u32> = bx.split(',').map(|v| v.parse().unwrap()).collect();
        let (x0, y0) = (b[0], b[1]);
        let (x1, y1) = (
            (b[0] + b[2]).min(self.width),
            (b[1] + b[3]).min(self.height),
        );
        assert!(
            x1 > x0 + 10 && y1 > y0 + 10,
            "box {bx} is off the screenshot"
        );
        let (mut hits, mut all) = (0, 0);
        for y in y0 + 2..y1 - 2 {
            for x in x0 + 2..x1 - 2 {
                all += 1;
                if pred(self.pixel(x, y)) {
                    hits += 1;
                }
            }
        }
        (hits, all)
    }
}

/// Not the page's white.
fn inked(p: [u8; 3]) -> bool {
    p.iter().any(|&c| c < 240)
}

fn near(color: [u8; 3]) -> impl Fn([u8; 3]) -> bool {
    move |p| p.iter().zip(color).all(|(&a, b)| a.abs_diff(b) < 40)
}

/// Red over whatever is beneath it (the grid's failures are translucent).
fn reddish(p: [u8; 3]) -> bool {
    let [r, g, b] = p.map(u16::from);
    r > 120 && r > g + 60 && r > b + 30
}

const BLUE: [u8; 3] = [0x25, 0x63, 0xeb];
const RED: [u8; 3] = [0xdc, 0x26, 0x26];
const PURPLE: [u8; 3] = [0x7c, 0x3a, 0xed];

/// A test of what a chart shows: what it looks for, the pixel test, how many
/// pixels at least.
type PixelTest<'a> = (&'a str, &'a dyn Fn([u8; 3]) -> bool, usize);

/// Checks that the chart `id` shows: enough non-white pixels, and at least
/// `min` pixels for which each of `tests` holds.
fn assert_drawn(shot: &Screenshot, dom: &str, id: &str, tests: &[PixelTest<'_>]) {
    let bx = attr(dom, id, "data-box");
    let (inked, all) = shot.count(&bx, inked);
    assert!(
        inked * 100 > all * 3,
        "#{id} (box {bx}) is blank: {inked} of {all} pixels not white"
    );
    for (what, test, min) in tests {
        let (hits, _) = shot.count(&bx, test);
        assert!(
            hits >= *min,
            "#{id} (box {bx}): {hits} {what} pixels, expected {min}+"
        );
    }
}

/// The screenshot's top down to `bottom`, for the README.
fn keep_screenshot(shot: &Screenshot, bottom: u32, to: &Path) {
    let height = bottom.min(shot.height);
    let file = std::fs::File::create(to).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), shot.width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&shot.rgb[..(3 * shot.width * height) as usize])
        .unwrap();
}

// ---------------------------------------------------------------- tests --

/// A workload of known outcomes: sleeps of mixed lengths, `false`s, exits
/// with 3 and timeouts, on 4 slots.
fn mixed_workload(dir: &Path) -> (PathBuf, Vec<u64>) {
    let mut lines = String::new();
    let mut failing = Vec::new();
    for i in 0..120u64 {
        match i % 20 {
            3 => {
                lines.push_str("run false\n");
                failing.push(i);
            }
            11 => {
                lines.push_str("run sh -c 'echo \"bad input $0\" >&2; exit 3' x\n");
                failing.push(i);
            }
            17 if i < 60 => {
                lines.push_str(r#"{"kind":"run","program":"sleep","args":["5"],"timeout_ms":150}"#);
                lines.push('\n');
                failing.push(i);
            }
            _ => lines.push_str(&format!("sleep {}\n", 5 + (i * 37) % 60)),
        }
    }
    let path = dir.join("mixed.txt");
    std::fs::write(&path, lines).unwrap();
    (path, failing)
}

#[test]
fn chromium_draws_the_report_of_a_real_run_with_every_task_and_failure() {
    let chromium = chromium(); // fails at once, saying what is missing
    let dir = tempfile::tempdir().unwrap();
    let (workload, failing) = mixed_workload(dir.path());
    let results = dir.path().join("results.jsonl");
    let run = cloudkon()
        .arg("run")
        .arg(&workload)
        .args(["--workers", "4", "--batch", "mixed", "-o"])
        .arg(&results)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let written = read_results(&results);
    assert_eq!(written.len(), 120);
    let timed_out = written
        .iter()
        .filter(|r| r.outcome == Outcome::TimedOut)
        .count();
    assert_eq!(timed_out, 3);

    let page = dir.path().join("report.html");
    let trace = dir.path().join("trace.json");
    let started = Instant::now();
    let out = ok(
        cloudkon()
            .current_dir(dir.path()) // the page names the file as given
            .args(["report", "results.jsonl"])
            .arg("-o")
            .arg(&page)
            .arg("--trace")
            .arg(&trace)
            .output()
            .unwrap(),
        "cloudkon report",
    );
    eprintln!("report of 120 results: {:?}", started.elapsed());
    assert!(
        text(&out.stdout).contains("report in"),
        "{}",
        text(&out.stdout)
    );

    let profile = dir.path().join("chromium-profile");
    let started = Instant::now();
    let dom = text(&browse(&page, "--dump-dom", &profile).stdout);
    let shot_path = dir.path().join("report.png");
    browse(
        &page,
        &format!("--screenshot={}", shot_path.display()),
        &profile,
    );
    eprintln!(
        "chromium ({}): DOM and screenshot in {:?}",
        chromium.display(),
        started.elapsed()
    );

    // The DOM after the page's script ran.
    assert_rendered(&dom);
    assert_eq!(card(&dom, "tasks"), "120");
    assert_eq!(card(&dom, "succeeded"), (120 - failing.len()).to_string());
    assert_eq!(card(&dom, "failed"), (failing.len() - 3).to_string());
    assert_eq!(card(&dom, "timed_out"), "3");
    assert_eq!(card(&dom, "slots"), "4");
    assert_eq!(attr(&dom, "timeline", "data-mode"), "tasks");
    assert_eq!(attr(&dom, "timeline", "data-rows"), "4");
    assert_eq!(attr(&dom, "timeline", "data-marks"), "120");
    assert_eq!(
        dom.matches("<title>task ").count(),
        120,
        "a tooltip per task"
    );
    assert_eq!(attr(&dom, "throughput", "data-total"), "120");
    for k in 0..3 {
        assert_eq!(attr(&dom, &format!("latency-{k}"), "data-total"), "120");
    }
    assert_eq!(
        attr(&dom, "failures", "data-total"),
        failing.len().to_string()
    );
    assert_eq!(
        attr(&dom, "failures", "data-rows"),
        failing.len().to_string()
    );
    let mut listed: Vec<u64> = dom
        .split("<tr data-id=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed, failing,
        "the failures table lists exactly the failed tasks"
    );
    assert!(
        dom.contains("bad input x"),
        "stderr of a failed task is shown"
    );
    assert!(dom.contains("exit status 3"));

    // The screenshot: each chart drawn where the page says it is.
    let shot = Screenshot::read(&shot_path);
    assert_eq!((shot.width, shot.height), WINDOW);
    assert_drawn(
        &shot,
        &dom,
        "timeline",
        &[("blue", &near(BLUE), 2_000), ("red", &near(RED), 100)],
    );
    assert_drawn(&shot, &dom, "throughput", &[("blue", &near(BLUE), 500)]);
    for k in 0..3 {
        assert_drawn(
            &shot,
            &dom,
            &format!("latency-{k}"),
            &[("purple", &near(PURPLE), 300)],
        );
    }
    // And the page is not one colour outside the charts either.
    let (inked, _) = shot.count(&format!("0,0,{},{}", WINDOW.0, 200), inked);
    assert!(inked > 2_000, "the title and summary are drawn: {inked}");

    if let Some(to) = std::env::var_os("CLOUDKON_REPORT_SCREENSHOT") {
        let latency = attr(&dom, "latency-0", "data-box");
        let bottom: u32 = latency
            .split(',')
            .skip(1)
            .take(3)
            .step_by(2)
            .map(|v| v.parse::<u32>().unwrap())
            .sum();
        keep_screenshot(&shot, bottom + 24, Path::new(&to));
        eprintln!("screenshot kept in {}", Path::new(&to).display());
    }

    // The trace: JSON, an event per task at its start and for its length,
    // on its worker's process and its slot's thread.
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let tasks: HashMap<u64, &serde_json::Value> = events
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| (e["args"]["id"].as_u64().unwrap(), e))
        .collect();
    assert_eq!(tasks.len(), 120);
    for r in &written {
        let e = tasks[&r.id];
        assert_eq!(e["ts"].as_u64(), Some(r.started.0));
        assert_eq!(e["dur"].as_u64(), Some(r.finished.0 - r.started.0));
        let slot: u64 = r.worker.rsplit_once('/').unwrap().1.parse().unwrap();
        assert_eq!(e["tid"].as_u64(), Some(slot));
    }
    let threads = events.iter().filter(|e| e["name"] == "thread_name").count();
    assert_eq!(threads, 4);
}

/// Synthetic results in the format `cloudkon run` writes (`TaskResult`):
/// `count` tasks of `ms` each on `slots` slots, every `fail_every`th failing.
fn synthetic(path: &Path, count: u64, slots: u64, ms: u64, fail_every: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let t0 = 1_790_000_000_000_000u64;
    for id in 0..count {
        let slot = id % slots;
        let start = t0 + (id / slots) * ms * 1000;
        let outcome = if id % fail_every == fail_every - 1 {
            Outcome::Failed {
                reason: format!("exit status {}", 1 + id % 3),
            }
        } else {
            Outcome::Succeeded
        };
        let result = TaskResult {
            batch: BatchId::new("big"),
            id,
            attempt: 1,
            exit_code: (!outcome.is_success()).then_some(1),
            outcome,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            worker: format!("worker-{}/{}", slot / 8, slot % 8).into(),
            submitted: Timestamp(t0),
            started: Timestamp(start),
            finished: Timestamp(start + ms * 1000),
        };
        serde_json::to_writer(&mut out, &result).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
}

#[test]
fn a_big_run_makes_a_bounded_page_that_chromium_draws_as_a_grid() {
    chromium();
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("big.jsonl");
    let tasks = 50_000;
    synthetic(&results, tasks, 200, 20, 97);
    let page = dir.path().join("big.html");
    let started = Instant::now();
    ok(
        cloudkon()
            .arg("report")
            .arg(&results)
            .arg("-o")
            .arg(&page)
            .output()
            .unwrap(),
        "cloudkon report",
    );
    let size = std::fs::metadata(&page).unwrap().len();
    eprintln!(
        "report of {tasks} results: {:?}, {size} bytes",
        started.elapsed()
    );
    assert!(size < 1 << 20, "the page is bounded: {size} bytes");

    let profile = dir.path().join("chromium-profile");
    let dom = text(&browse(&page, "--dump-dom", &profile).stdout);
    assert_rendered(&dom);
    assert_eq!(card(&dom, "tasks"), tasks.to_string());
    assert_eq!(card(&dom, "failed"), (tasks / 97).to_string());
    assert_eq!(attr(&dom, "timeline", "data-mode"), "grid");
    assert_eq!(attr(&dom, "timeline", "data-tasks"), tasks.to_string());
    assert_eq!(
        attr(&dom, "timeline", "data-rows"),
        "100",
        "200 slots, 2 a row"
    );
    assert_eq!(attr(&dom, "throughput", "data-total"), tasks.to_string());
    assert_eq!(
        attr(&dom, "failures", "data-total"),
        (tasks / 97).to_string()
    );
    assert_eq!(
        attr(&dom, "failures", "data-rows"),
        (tasks / 97).to_string()
    );
    let shot_path = dir.path().join("big.png");
    browse(
        &page,
        &format!("--screenshot={}", shot_path.display()),
        &profile,
    );
    let shot = Screenshot::read(&shot_path);
    assert_drawn(
        &shot,
        &dom,
        "timeline",
        &[("blue", &near(BLUE), 20_000), ("reddish", &reddish, 50)],
    );
    assert_drawn(&shot, &dom, "throughput", &[("blue", &near(BLUE), 2_000)]);
}

#[test]
fn malformed_lines_are_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl");
    synthetic(&results, 5, 2, 10, 100);
    let mut text_in = std::fs::read_to_string(&results).unwrap();
    let lines: Vec<&str> = text_in.lines().collect();
    text_in = format!(
        "{}\n{}\n{{\"id\":1,\"status\":\"succeeded\"}}\n\n{}\nnot json\n{}\n{}\n",
        lines[0],
        lines[1],
        lines[2],
        lines[3],
        &lines[4][..40]
    );
    std::fs::write(&results, text_in).unwrap();
    let page = dir.path().join("report.html");
    let trace = dir.path().join("trace.json");
    let out = cloudkon()
        .arg("report")
        .arg(&results)
        .arg("-o")
        .arg(&page)
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let name = results.display();
    assert!(err.contains(&format!("error: {name}:3: column ")), "{err}");
    assert!(err.contains("missing field"), "{err}");
    assert!(err.contains(&format!("error: {name}:6: column ")), "{err}");
    assert!(err.contains(&format!("error: {name}:8: ")), "{err}");
    assert!(
        err.contains("nothing was written: 3 malformed lines"),
        "{err}"
    );
    assert!(!page.exists() && !trace.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file is left behind: {left:?}");

    // Nothing to write, and no results, are usage errors too.
    let out = cloudkon().arg("report").arg(&results).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nothing to write"));
    let nowhere = dir.path().join("no-such-dir/report.html");
    let out = cloudkon()
        .arg("report")
        .arg(&results)
        .arg("-o")
        .arg(&nowhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("cannot create"),
        "{}",
        text(&out.stderr)
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let out = cloudkon()
        .arg("report")
        .arg(&empty)
        .arg("-o")
        .arg(&page)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no results"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_output_that_is_the_results_file_by_any_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl");
    synthetic(&results, 3, 2, 10, 100);
    let before = std::fs::read(&results).unwrap();
    let hard = dir.path().join("hard.jsonl");
    std::fs::hard_link(&results, &hard).unwrap();
    let soft = dir.path().join("soft.html");
    std::os::unix::fs::symlink(&results, &soft).unwrap();
    let dotted = dir.path().join(".").join("r.jsonl");
    for (flag, output) in [
        ("-o", &results),
        ("-o", &hard),
        ("-o", &soft),
        ("--trace", &dotted),
    ] {
        let out = cloudkon()
            .arg("report")
            .arg(&results)
            .arg(flag)
            .arg(output)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {output:?}: {err}");
        assert!(
            err.contains(&format!(
                "{flag} {}: that is the results file",
                output.display()
            )),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&results).unwrap(),
            before,
            "{flag} {output:?}"
        );
        assert!(std::fs::symlink_metadata(&soft).unwrap().is_symlink());
    }
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 3, "no temporary file is left behind");
    // The page with the trace over the results: refused too, nothing written.
    let page = dir.path().join("report.html");
    let out = cloudkon()
        .arg("report")
        .arg(&results)
        .arg("-o")
        .arg(&page)
        .arg("--trace")
        .arg(&hard)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!page.exists());
    assert_eq!(std::fs::read(&results).unwrap(), before);
    // The page and the trace in one file, by one name or two: refused.
    let trace = dir.path().join("trace.json");
    std::fs::write(&trace, "kept").unwrap();
    let linked = dir.path().join("linked.json");
    std::fs::hard_link(&trace, &linked).unwrap();
    for page in [&trace, &linked] {
        let out = cloudkon()
            .arg("report")
            .arg(&results)
            .arg("-o")
            .arg(page)
            .arg("--trace")
            .arg(&trace)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("-o and --trace both name"), "{err}");
        assert_eq!(std::fs::read_to_string(&trace).unwrap(), "kept");
    }
}

/// An output that is a directory is refused before the results are read
/// (they are malformed here: read, they would be the error), and the other
/// output is left as it was: both are written, or neither.
#[test]
fn an_output_that_is_a_directory_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl");
    synthetic(&results, 3, 2, 10, 100);
    let malformed = dir.path().join("bad.jsonl");
    std::fs::write(&malformed, "not json\n").unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let trace = dir.path().join("t.json");
    let page = dir.path().join("report.html");
    for results in [&results, &malformed] {
        std::fs::write(&trace, "kept").unwrap();
        let out = cloudkon()
            .arg("report")
            .arg(results)
            .arg("-o")
            .arg(&out_dir)
            .arg("--trace")
            .arg(&trace)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(
            std::fs::read_to_string(&trace).unwrap(),
            "kept",
            "{results:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(2), "{results:?}: {err}");
        assert!(
            err.contains(&format!("-o {}: that is a directory", out_dir.display())),
            "{err}"
        );
        assert!(!err.contains("malformed"), "read before refusing: {err}");
    }
    std::fs::write(&page, "kept").unwrap();
    let out = cloudkon()
        .arg("report")
        .arg(&malformed)
        .arg("-o")
        .arg(&page)
        .arg("--trace")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "--trace {}: that is a directory",
            out_dir.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&page).unwrap(), "kept");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 5, "no temporary file is left behind");
}

#[test]
fn a_last_line_cut_short_is_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("r.jsonl");
    synthetic(&results, 2, 2, 10, 100);
    // A run killed (or still writing) mid-line: no newline after it.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&results)
        .unwrap();
    file.write_all(br#"{"batch":"b","id":"#).unwrap();
    drop(file);
    let page = dir.path().join("report.html");
    let out = ok(
        cloudkon()
            .arg("report")
            .arg(&results)
            .arg("-o")
            .arg(&page)
            .output()
            .unwrap(),
        "a report of the whole lines",
    );
    assert!(
        text(&out.stdout).contains("(2 tasks"),
        "{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "warning: {}:3: skipped: the last line is cut short",
            results.display()
        )),
        "{err}"
    );
    assert!(page.exists());
}

#[test]
fn help_has_an_example() {
    let out = ok(
        cloudkon().args(["report", "--help"]).output().unwrap(),
        "help",
    );
    let help = text(&out.stdout);
    assert!(
        help.contains("cloudkon report results.jsonl -o report.html"),
        "{help}"
    );
    assert!(help.contains("--trace"), "{help}");
    assert!(help.contains("ui.perfetto.dev"), "{help}");
    let top = text(&ok(cloudkon().arg("--help").output().unwrap(), "help").stdout);
    assert!(top.contains("report"), "{top}");
}
