//! The meta-audit's scorecard: one self-contained HTML page (inline CSS and
//! SVG, no script, no external asset) with the run's composites, the
//! specificity counts, the wiring table and the deltas — seed `003` §7.

use std::fmt::Write as _;

use super::{DeltaReport, RunAggregate, SpecificityReport, Wiring};

/// Everything the scorecard shows; `delta` is absent without a baseline.
pub struct Parts<'a> {
    pub aggregate: &'a RunAggregate,
    pub specificity: &'a SpecificityReport,
    pub wiring: &'a Wiring,
    pub delta: Option<&'a DeltaReport>,
}

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn score(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_string(), |x| format!("{x:.1}"))
}

fn signed(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_string(), |x| format!("{x:+.1}"))
}

fn percent(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_string(), |x| format!("{:.0} %", x * 100.0))
}

/// A horizontal bar chart of `rows` (label, 0–10 score), as inline SVG.
fn bars(title: &str, rows: &[(String, Option<f64>)], threshold: Option<f64>) -> String {
    const ROW: usize = 22;
    const LABEL: usize = 220;
    const WIDTH: usize = 300;
    let height = rows.len() * ROW + 8;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"{}\" width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">",
        escape(title),
        LABEL + WIDTH + 50,
        LABEL + WIDTH + 50
    );
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = i * ROW + 4;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"12\">{}</text>",
            LABEL - 6,
            y + 14,
            escape(label)
        );
        if let Some(v) = value {
            let w = (v.clamp(0.0, 10.0) / 10.0 * WIDTH as f64).round();
            let colour = if threshold.is_some_and(|t| *v < t) {
                "#b3261e"
            } else {
                "#1e6b3a"
            };
            let _ = write!(
                svg,
                "<rect x=\"{LABEL}\" y=\"{y}\" width=\"{w}\" height=\"16\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{v:.1}</text>",
                LABEL as f64 + w + 4.0,
                y + 13
            );
        } else {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#555\">n/a</text>",
                LABEL + 4,
                y + 13
            );
        }
    }
    if let Some(t) = threshold {
        let x = LABEL as f64 + t / 10.0 * WIDTH as f64;
        let _ = write!(
            svg,
            "<line x1=\"{x}\" x2=\"{x}\" y1=\"0\" y2=\"{height}\" stroke=\"#333\" stroke-dasharray=\"3 3\"/>"
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The page.
pub fn html(parts: &Parts<'_>) -> String {
    let a = parts.aggregate;
    let mut out = String::new();
    let verdict = if a.passed { "passed" } else { "did not pass" };
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Meta-audit of run {run}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b;max-width:60rem}}\
         table{{border-collapse:collapse;margin:.5rem 0 1.2rem}}td,th{{border-top:1px solid #ccc;padding:.2rem .6rem;text-align:left}}\
         .bad{{color:#b3261e}}.good{{color:#1e6b3a}}</style></head><body>\
         <h1>Meta-audit of run <code>{run}</code></h1>\
         <p>Template <code>{template}</code> v{version}, run {status}. Run composite <strong>{composite}</strong> \
         against a threshold of {threshold:.1}: <strong class=\"{class}\">{verdict}</strong>.</p>",
        run = escape(&a.run_id),
        template = escape(&a.template_id),
        version = escape(&a.template_version),
        status = escape(&a.status),
        composite = score(a.composite),
        threshold = a.threshold,
        class = if a.passed { "good" } else { "bad" },
    );
    if !a.reasons.is_empty() {
        out.push_str("<ul>");
        for r in &a.reasons {
            let _ = write!(out, "<li>{}</li>", escape(r));
        }
        out.push_str("</ul>");
    }

    out.push_str("<h2>Composites</h2>");
    let dims: Vec<(String, Option<f64>)> = factory_audit::DIMENSION_NAMES
        .iter()
        .zip(a.dimensions)
        .map(|(name, v)| (name.to_string(), v))
        .collect();
    out.push_str(&bars("Run dimensions", &dims, None));
    let per_block: Vec<(String, Option<f64>)> = a
        .blocks
        .iter()
        .map(|b| (b.block.clone(), Some(b.composite)))
        .collect();
    out.push_str(&bars("Block composites", &per_block, Some(a.threshold)));
    out.push_str("<table><tr><th>block</th><th>composite</th><th>D1</th><th>D2</th><th>D3</th><th>D4</th><th>D5</th><th>weakest</th><th>flags</th></tr>");
    for b in &a.blocks {
        let mut flags = Vec::new();
        if b.calibration_warning.is_some() {
            flags.push("calibration");
        }
        if b.score_inflation {
            flags.push("inflation");
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.1}</td>",
            escape(&b.block),
            b.composite
        );
        for d in b.dimensions {
            let _ = write!(out, "<td>{}</td>", score(d));
        }
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td></tr>",
            escape(&b.weakest),
            flags.join(", ")
        );
    }
    out.push_str("</table>");

    let s = parts.specificity;
    let _ = write!(
        out,
        "<h2>Specificity</h2><p>{} of the run's judged sentences carry a number, a proper noun, a quotation{}; {} are stock phrases with no detail. {} words, the subject named {} times.</p>",
        percent(s.specific_share),
        s.subject
            .as_deref()
            .map_or(String::new(), |n| format!(" or “{}”", escape(n))),
        percent(s.generic_ratio),
        s.words,
        s.subject_mentions
    );
    out.push_str("<table><tr><th>artifact</th><th>words</th><th>sentences</th><th>specific</th><th>generic</th><th>subject per 1,000 words</th></tr>");
    for x in &s.artifacts {
        let _ = write!(
            out,
            "<tr><td>{}.{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>",
            escape(&x.block),
            escape(&x.key),
            x.counts.words,
            x.counts.sentences,
            percent(Some(x.counts.specific_share)),
            percent(Some(x.counts.generic_ratio)),
            x.counts.subject_density
        );
    }
    out.push_str("</table>");

    let w = parts.wiring;
    let _ = write!(
        out,
        "<h2>Wiring</h2><table><tr><th>fields</th><th>wired</th><th>orphans</th><th>deliverables</th><th>broken</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        w.fields,
        w.wired,
        w.orphans.len(),
        w.deliverables.len(),
        w.broken.len() + w.unresolved.len()
    );
    if !w.orphans.is_empty() {
        let _ = write!(
            out,
            "<p>Orphans (declared by a block others read, read by none): {}</p>",
            escape(&w.orphans.join(", "))
        );
    }
    if !w.terms.is_empty() {
        out.push_str("<h3>What each block used of what it read</h3><table><tr><th>block</th><th>read</th><th>terms used</th><th>unused, e.g.</th></tr>");
        for t in &w.terms {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{} of {}</td><td>{}</td></tr>",
                escape(&t.consumer),
                escape(&t.upstream),
                t.used,
                t.terms,
                escape(
                    &t.unused
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            );
        }
        out.push_str("</table>");
    }
    for b in w.broken.iter().chain(&w.unresolved) {
        let _ = write!(
            out,
            "<p class=\"bad\">{} reads {}.{}: {}</p>",
            escape(&b.consumer),
            escape(&b.producer),
            escape(&b.key),
            escape(&b.problem)
        );
    }

    out.push_str("<h2>Deltas</h2>");
    match parts.delta {
        None => out.push_str("<p>No earlier run of the template to compare with.</p>"),
        Some(d) => {
            let _ = write!(
                out,
                "<p>Against run <code>{}</code> (v{} → v{}): composite {} → {} (<strong>{}</strong>).</p>",
                escape(&d.baseline_run_id),
                escape(&d.template_version.0),
                escape(&d.template_version.1),
                score(d.before),
                score(d.after),
                signed(d.delta)
            );
            out.push_str("<table><tr><th>block</th><th>before</th><th>after</th><th>Δ</th><th>ΔD1</th><th>ΔD2</th><th>ΔD3</th><th>ΔD4</th><th>ΔD5</th></tr>");
            for b in &d.blocks {
                let _ = write!(
                    out,
                    "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                    if b.regression { " class=\"bad\"" } else { "" },
                    escape(&b.block),
                    score(b.before),
                    score(b.after),
                    signed(b.delta)
                );
                for x in b.dimensions {
                    let _ = write!(out, "<td>{}</td>", signed(x));
                }
                out.push_str("</tr>");
            }
            out.push_str("</table>");
            for (what, list) in [
                ("Regressions", &d.regressions),
                ("Blocks added", &d.added_blocks),
                ("Blocks removed", &d.removed_blocks),
                ("Blocks whose definition changed", &d.changed_blocks),
                ("Blocks whose prompt changed", &d.changed_prompts),
            ] {
                if !list.is_empty() {
                    let _ = write!(out, "<p>{what}: {}</p>", escape(&list.join("; ")));
                }
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}
