//! Plots of a run as plain SVG: polylines over simulated time, by hand (no
//! plotting crate).

use std::fmt::Write as _;

use super::engine::Sample;

const W: f64 = 800.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 30.0;
const RIGHT: f64 = 20.0;

/// One line of a chart: its name, colour, and value per sample.
pub type Series<'a> = (&'a str, &'a str, fn(&Sample) -> f64);

/// A line chart of `series` over the samples' time.
pub fn chart(title: &str, samples: &[Sample], series: &[Series<'_>]) -> String {
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1e-9);
    let y_max = series
        .iter()
        .flat_map(|(_, _, f)| samples.iter().map(f))
        .fold(0.0, f64::max)
        .max(1.0);
    let x = |t: f64| LEFT + (W - LEFT - RIGHT) * t / t_max;
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v / y_max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    // Axes, with the extremes labelled.
    let _ = writeln!(
        s,
        r#"<polyline points="{LEFT},{TOP} {LEFT},{} {},{}" fill="none" stroke="black"/>"#,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
        LEFT - 5.0,
        TOP + 4.0,
        y_max
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">0</text>"#,
        LEFT - 5.0,
        H - BOTTOM
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}">0 s</text>"#,
        H - BOTTOM + 16.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{t_max:.0} s</text>"#,
        W - RIGHT,
        H - BOTTOM + 16.0
    );
    for (i, (name, colour, f)) in series.iter().enumerate() {
        let mut points = String::new();
        for sample in samples {
            let _ = write!(points, "{:.1},{:.1} ", x(sample.t), y(f(sample)));
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
            points.trim_end()
        );
        let lx = LEFT + 10.0 + 180.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{lx}" y="{}" fill="{colour}">{}</text>"#,
            H - 8.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Queue depth (visible and in flight) over time.
pub fn queue_depth(name: &str, samples: &[Sample]) -> String {
    chart(
        &format!("{name}: queue depth (messages)"),
        samples,
        &[
            ("visible", "#1f77b4", |s| s.visible as f64),
            ("in flight", "#ff7f0e", |s| s.in_flight as f64),
        ],
    )
}

/// Workers and busy slots over time.
pub fn workers(name: &str, samples: &[Sample]) -> String {
    chart(
        &format!("{name}: workers"),
        samples,
        &[
            ("workers (asked for)", "#2ca02c", |s| s.workers as f64),
            ("ready", "#9467bd", |s| s.ready as f64),
        ],
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
