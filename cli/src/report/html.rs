//! The report page: `report.html` (styles and the script that draws the
//! charts as SVG) with the data as JSON inside it. No network: nothing is
//! fetched, everything is in the one file.

use anyhow::{Context, Result};

use super::model::ReportData;

const TEMPLATE: &str = include_str!("report.html");
const TITLE: &str = "{{TITLE}}";
const DATA: &str = "{{DATA}}";

pub fn render(data: &ReportData, title: &str) -> Result<String> {
    let json = serde_json::to_string(data).context("cannot encode the report's data")?;
    // Inside <script>, `</script>` or `<!--` in a string (a failure reason
    // is anyone's text) would end or bend the element: JSON may spell `<`
    // as \u003c, and `<` only ever appears inside strings.
    let json = json.replace('<', "\\u003c");
    let (before, after) = TEMPLATE
        .split_once(DATA)
        .context("the report template has no data slot")?;
    let mut page = String::with_capacity(TEMPLATE.len() + json.len() + title.len());
    page.push_str(&before.replace(TITLE, &escape(title)));
    page.push_str(&json);
    page.push_str(after);
    Ok(page)
}

/// Text for HTML element content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::Collector;
    use cloudkon_core::{BatchId, Outcome, TaskResult, Timestamp};

    #[test]
    fn the_page_is_self_contained_and_text_cannot_break_out() {
        let mut c = Collector::new();
        c.add(&TaskResult {
            batch: BatchId::new("b"),
            id: 0,
            attempt: 1,
            outcome: Outcome::Failed {
                reason: "</script><script>alert(1)</script><!--".into(),
            },
            exit_code: Some(1),
            stdout: String::new(),
            stderr: "<b>".into(),
            truncated: false,
            artifact: None,
            artifact_url: None,
            worker: "local/0".into(),
            submitted: Timestamp(1),
            started: Timestamp(2),
            finished: Timestamp(3),
        });
        let page = render(&c.finish("r.jsonl"), "a <title> & more").unwrap();
        assert!(page.contains("<title>a &lt;title&gt; &amp; more</title>"));
        assert_eq!(
            page.matches("</script>").count(),
            2,
            "the data and the script"
        );
        assert!(!page.contains("<!--"));
        assert!(page.contains(r#"\u003c/script>\u003cscript>alert(1)"#));
        // Nothing is fetched: no external URL in src or href, no @import.
        for needle in [
            "src=\"http",
            "href=\"http",
            "@import",
            "url(http",
            "src=\"//",
        ] {
            assert!(!page.contains(needle), "{needle}");
        }
    }
}
