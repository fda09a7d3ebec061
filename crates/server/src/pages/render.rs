//! Rendering helpers shared by the pages: artifacts (Markdown as HTML, JSON
//! as a collapsible tree), audit bars, times.

use factory_audit::AuditReport;
use factory_core::run::Millis;
use factory_core::template::ArtifactFormat;
use maud::{Markup, PreEscaped, html};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
use serde_json::Value;

/// Markdown to HTML. Raw HTML inside the Markdown is shown as text: artifacts
/// come from models and scripts, and must not run in an operator's browser.
pub fn markdown(text: &str) -> Markup {
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(
        |event| match event {
            Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => Event::Start(Tag::Link {
                link_type,
                dest_url: safe_url(dest_url),
                title,
                id,
            }),
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            }) => Event::Start(Tag::Image {
                link_type,
                dest_url: safe_url(dest_url),
                title,
                id,
            }),
            other => other,
        },
    );
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    PreEscaped(out)
}

/// Keeps web and mail links and relative ones; anything else (`javascript:`,
/// `data:`, …) becomes `#`.
fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let lower = url.trim().to_ascii_lowercase();
    let scheme = lower.split_once(':').map(|(s, _)| s);
    let relative = scheme.is_none() || lower.starts_with('/') || lower.starts_with('#');
    match scheme {
        _ if relative => url,
        Some("http" | "https" | "mailto") => url,
        _ => CowStr::Borrowed("#"),
    }
}

/// JSON bigger than this is shown as plain pretty text (a tree of thousands
/// of nodes helps nobody and costs render time).
const TREE_LIMIT: usize = 200_000;

pub fn json(text: &str) -> Markup {
    match serde_json::from_str::<Value>(text) {
        Ok(value) if text.len() <= TREE_LIMIT => {
            html! { div.json-tree { (json_node(None, &value, 0)) } }
        }
        Ok(value) => {
            html! { pre.artifact { (serde_json::to_string_pretty(&value).unwrap_or_default()) } }
        }
        Err(error) => html! {
            p.error { "Not valid JSON: " (error.to_string()) }
            pre.artifact { (text) }
        },
    }
}

fn json_node(key: Option<&str>, value: &Value, depth: usize) -> Markup {
    let label = html! { @if let Some(key) = key { span.json-key { (key) ": " } } };
    match value {
        Value::Object(map) => html! {
            details open[depth < 2] {
                summary { (label) "{" (map.len()) " keys}" }
                @for (k, v) in map { (json_node(Some(k), v, depth + 1)) }
            }
        },
        Value::Array(items) => html! {
            details open[depth < 2] {
                summary { (label) "[" (items.len()) " items]" }
                @for (i, v) in items.iter().enumerate() { (json_node(Some(&i.to_string()), v, depth + 1)) }
            }
        },
        Value::String(s) => html! { div.json-leaf { (label) span.json-string { "\"" (s) "\"" } } },
        other => html! { div.json-leaf { (label) span.json-scalar { (other.to_string()) } } },
    }
}

/// An artifact as a page shows it; media by reference to `url` (the
/// artifact's own address, served with its media type): an image inline,
/// an audio player, a PDF's link, each with what its checks found.
pub fn artifact(format: ArtifactFormat, content: &[u8], url: &str) -> Markup {
    if let Some(kind) = format.media_kind() {
        let facts = factory_audit::media::inspect(kind, content);
        let said = match &facts {
            Ok(facts) => format!("{} · {} bytes", facts.summary(), content.len()),
            Err(problem) => format!("{} {problem}", format.as_str()),
        };
        return html! {
            figure.media {
                @if kind.is_image() {
                    img src=(url) alt={ "the " (format.as_str()) " artifact (" (said) ")" } loading="lazy";
                } @else if kind.is_audio() {
                    audio controls preload="metadata" src=(url) { a href=(url) { "Download the audio" } }
                } @else {
                    a href=(url) { "Open the PDF" }
                }
                figcaption.muted { (said) " — media is checked for its format, size and length, not judged by the D1–D5 audit" }
            }
        };
    }
    if format == ArtifactFormat::Directory
        && let Ok(binary) = factory_runtime::bundle_binary_files(content)
        && !binary.is_empty()
    {
        // A folder's binary files are listed, not shown as base64.
        let files = factory_runtime::bundle_files(content).unwrap_or_default();
        let mut shown = serde_json::Map::new();
        for (path, text) in files {
            shown.insert(path, Value::String(text));
        }
        for (path, bytes) in binary {
            shown.insert(
                path,
                Value::String(format!("[binary, {} bytes]", bytes.len())),
            );
        }
        return json(&Value::Object(shown).to_string());
    }
    let text = String::from_utf8_lossy(content);
    match format {
        ArtifactFormat::Md => html! { div.markdown { (markdown(&text)) } },
        ArtifactFormat::Json | ArtifactFormat::Directory => json(&text),
        _ => html! { pre.artifact { (text) } },
    }
}

/// `A:7.2`-style badge coloured by score.
pub fn badge(composite: f64, text: &str) -> Markup {
    html! { span class={"badge " (band(composite))} title="D1–D5 audit composite (0–10)" { (text) } }
}

/// The colour band of an audit composite: good, fair or poor.
pub fn band(composite: f64) -> &'static str {
    if composite >= 7.5 {
        "good"
    } else if composite >= 5.0 {
        "fair"
    } else {
        "poor"
    }
}

pub fn audit(report: &AuditReport) -> Markup {
    html! {
        div.audit {
            p { (badge(report.composite, &report.badge)) " weakest: " strong { (report.weakest) }
                @if let Some(self_score) = report.self_score { " · self-score " (format!("{self_score:.1}")) } }
            @if let Some(warning) = &report.calibration_warning { p.warning { "Calibration: " (warning) } }
            @if report.score_inflation { p.warning { "Score inflation: the self-score rose while the audit fell." } }
            @if let Some(ceiling) = report.ceiling.as_ref().filter(|c| c.binding) {
                p.warning { "Capped at " (format!("{:.1}", ceiling.score)) " (from " (format!("{:.1}", ceiling.uncapped)) "): " (ceiling.reason) }
            }
            @if report.low_evidence {
                p.warning { "Low evidence: only " (format!("{:.0}%", report.judged_weight * 100.0)) " of the weights could be judged." }
            }
            table.bars {
                @for (name, dimension) in report.dimensions() {
                    tr {
                        th { (name.to_uppercase()) }
                        td { meter.bar min="0" max="10" value=(dimension.score.unwrap_or(0.0)) title="score out of 10" {} }
                        td.num title=(if dimension.score.is_none() { "not applicable: nothing to judge" } else { "" }) { (dimension.display()) }
                        td.num {
                            @if let Some(deltas) = &report.deltas {
                                @let d = match name { "d1" => deltas.d1, "d2" => deltas.d2, "d3" => deltas.d3, "d4" => deltas.d4, _ => deltas.d5 };
                                @if let Some(d) = d {
                                    span class=(if d < 0.0 { "delta down" } else { "delta up" }) { (format!("{d:+.1}")) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(deltas) = &report.deltas {
                p { "Composite change vs the previous attempt: " (format!("{:+.1}", deltas.composite))
                    @if deltas.regression { " " span.warning { "regression" } } }
            }
            @if !report.suggestions.is_empty() {
                h4 { "Fix suggestions" }
                ol.suggestions {
                    @for s in &report.suggestions {
                        li { span class={"prio " (format!("{:?}", s.priority).to_lowercase())} { (format!("{:?}", s.priority).to_lowercase()) } " " (s.message) }
                    }
                }
            }
        }
    }
}

/// Event times in the pages: UTC, with the zone said.
pub fn time(ms: Millis) -> String {
    format!("{} UTC", factory_core::run::format_utc(ms))
}

/// `text` on one line, shortened to `max` characters with an ellipsis.
pub fn clip(text: &str, max: usize) -> String {
    let line = text.replace('\n', " ");
    if line.chars().count() <= max {
        line
    } else {
        let mut short: String = line.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

/// Milliseconds in the unit a person reads: `800 ms`, `1.5 s`, `30 s`,
/// `2 min`, `1 min 30 s`, `2 h`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 if ms.is_multiple_of(1_000) => format!("{} s", ms / 1_000),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        _ => {
            let secs = ms / 1_000;
            let (h, m, s) = (secs / 3_600, secs / 60 % 60, secs % 60);
            let parts: Vec<String> = [(h, "h"), (m, "min"), (s, "s")]
                .iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, unit)| format!("{n} {unit}"))
                .collect();
            parts.join(" ")
        }
    }
}

/// One point of a [`trend`]: what its tooltip says, where it links, its
/// 0–10 score.
pub struct TrendPoint {
    pub label: String,
    pub href: Option<String>,
    pub score: f64,
}

/// A 0–10 score over runs (oldest left) as a line: each point coloured by
/// its band, titled with its label and score, and a link when it has one.
pub fn trend(aria: &str, caption: &str, points: &[TrendPoint], width: f32, height: f32) -> Markup {
    let step = (width - 40.0) / (points.len().max(2) - 1) as f32;
    let scale = (height - 24.0) / 10.0;
    let at = |i: usize, score: f64| (30.0 + i as f32 * step, height - 14.0 - score as f32 * scale);
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (x, y) = at(i, p.score);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    // A chart of links is a group of controls, not one picture.
    let role = if points.iter().any(|p| p.href.is_some()) {
        "group"
    } else {
        "img"
    };
    html! {
        figure.quality-chart {
            svg role=(role) aria-label=(aria) width=(format!("{width:.0}")) height=(format!("{height:.0}"))
                viewBox=(format!("0 0 {width:.0} {height:.0}")) xmlns="http://www.w3.org/2000/svg" {
                @for level in [0u8, 5, 10] {
                    @let y = height - 14.0 - level as f32 * scale;
                    line.grid x1="26" x2=(format!("{width:.0}")) y1=(format!("{y:.1}")) y2=(format!("{y:.1}")) {}
                    text.axis x="20" y=(format!("{:.1}", y + 4.0)) text-anchor="end" { (level) }
                }
                polyline.trend points=(line.join(" ")) {}
                @for (i, p) in points.iter().enumerate() {
                    @let (x, y) = at(i, p.score);
                    @let dot = html! {
                        circle class={"dot " (band(p.score))} cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="4" {
                            title { (p.label) " · " (format!("{:.1}", p.score)) }
                        }
                    };
                    @match &p.href {
                        Some(href) => { a href=(href) aria-label={(p.label) " · " (format!("{:.1}", p.score))} { (dot) } },
                        None => { (dot) },
                    }
                }
            }
            figcaption.muted { (caption) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_renders_but_raw_html_does_not_run() {
        let out = markdown("# Title\n\n<script>alert(1)</script>\n\n*x*").into_string();
        assert!(out.contains("<h1>Title</h1>"), "{out}");
        assert!(out.contains("<em>x</em>"));
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;"));
        let links = markdown("[a](javascript:alert(1)) [b](https://x.org) [c](notes.md) ![d](data:image/png;base64,AA)")
            .into_string();
        assert!(
            !links.contains("javascript:") && !links.contains("data:"),
            "{links}"
        );
        assert!(
            links.contains("href=\"https://x.org\"") && links.contains("href=\"notes.md\""),
            "{links}"
        );
    }

    #[test]
    fn json_becomes_a_tree_and_bad_json_says_so() {
        let out = json(r#"{"a": [1, "<b>"]}"#).into_string();
        assert!(out.contains("[2 items]"), "{out}");
        assert!(out.contains("&lt;b&gt;"));
        assert!(json("{nope").into_string().contains("Not valid JSON"));
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_795_000_000_000), "2026-11-18 11:06:40 UTC");
    }

    #[test]
    fn durations_read_in_their_unit() {
        for (ms, words) in [
            (0, "0 ms"),
            (800, "800 ms"),
            (1_000, "1 s"),
            (1_500, "1.5 s"),
            (30_000, "30 s"),
            (60_000, "1 min"),
            (90_000, "1 min 30 s"),
            (7_200_000, "2 h"),
            (86_400_000, "24 h"),
        ] {
            assert_eq!(duration(ms), words, "{ms} ms");
        }
    }
}
