//! The chart's Grafana dashboard (`charts/cloudkon/dashboards/cloudkon.json`):
//! the metric names its PromQL queries, and the metric names a Prometheus
//! exposition (a `/metrics` page) holds, to compare the two.

use std::collections::{BTreeMap, BTreeSet};

use super::repo;

pub fn dashboard() -> serde_json::Value {
    let path = repo().join("charts/cloudkon/dashboards/cloudkon.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every query in a dashboard, with the title of the panel (or variable) it
/// belongs to: the panels' `targets[].expr`, and the query variables.
pub fn queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in value.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
            panels(&panel["panels"], out); // collapsed rows hold theirs
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap_or_default();
            out.push((
                format!("${}", var["name"].as_str().unwrap()),
                query.to_string(),
            ));
        }
    }
    out
}

/// Metric name → the panels that query it.
pub fn dashboard_metrics() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (title, query) in queries(&dashboard()) {
        for name in metric_names(&query) {
            used.entry(name).or_default().push(title.clone());
        }
    }
    used
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Followed by a list of label names in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
];

/// The metric names a PromQL query (or a Grafana `label_values(SELECTOR,
/// LABEL)` variable query) selects. Grafana variables (`$x`, `${x}`,
/// `$__range_s`) count as numbers; strings, label matchers (`{...}`) and
/// ranges (`[...]`) are skipped; an identifier followed by `(` is a
/// function, and aggregations, label lists and keywords are no metrics.
/// (It does not read `{__name__="..."}` matchers: the test refuses them.)
pub fn metric_names(query: &str) -> BTreeSet<String> {
    let query = query.trim();
    let query = match query.strip_prefix("label_values(") {
        Some(args) => {
            let args = args.strip_suffix(')').expect("label_values(...) closes");
            match top_level_comma(args) {
                Some(at) => &args[..at],
                None => return BTreeSet::new(), // label_values(LABEL): no metric
            }
        }
        None => query,
    };
    assert!(
        !query.contains("__name__"),
        "{query}: __name__ matchers are not read"
    );
    let chars: Vec<char> = without_variables_strings_and_brackets(query);
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number (1, 0.99, 1e3, 0x1f).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let before_paren = chars.get(next) == Some(&'(');
        if LABEL_LISTS.contains(&word.as_str()) {
            if before_paren {
                i = close_paren(&chars, next) + 1;
            }
            continue;
        }
        if before_paren
            || AGGREGATIONS.contains(&word.as_str())
            || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
        {
            continue;
        }
        names.insert(word);
    }
    names
}

fn top_level_comma(args: &str) -> Option<usize> {
    let mut depth = 0i32;
    let mut quote = None;
    for (i, c) in args.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '{' | '[') => depth += 1,
            (None, ')' | '}' | ']') => depth -= 1,
            (None, ',') if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn close_paren(chars: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (i, &c) in chars.iter().enumerate().skip(open) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    panic!(
        "unclosed parenthesis in {}",
        chars.iter().collect::<String>()
    );
}

/// The query with Grafana variables as `1`, and strings, `{...}` and `[...]`
/// as spaces.
fn without_variables_strings_and_brackets(query: &str) -> Vec<char> {
    let chars: Vec<char> = query.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
                out.extend([' ', '1', ' ']);
            }
            q @ ('"' | '\'' | '`') => {
                i += 1;
                while i < chars.len() && chars[i] != q {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            open @ ('{' | '[') => {
                let close = if open == '{' { '}' } else { ']' };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if let q @ ('"' | '\'' | '`') = chars[i] {
                        i += 1;
                        while i < chars.len() && chars[i] != q {
                            if chars[i] == '\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The sample names an exposition (Prometheus text or OpenMetrics) holds:
/// those of its samples, and those each `# TYPE` line implies (a counter
/// `x` is queried as `x_total`, a histogram as `x_bucket`, `x_sum`,
/// `x_count`), so that families with no sample yet count too.
pub fn exposition_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            for suffix in suffixes {
                // Prometheus text format names counters with their _total.
                let base = if kind == "counter" {
                    name.strip_suffix("_total").unwrap_or(name)
                } else {
                    name
                };
                names.insert(format!("{base}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}
