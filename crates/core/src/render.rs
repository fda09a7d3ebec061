//! Drawings of a pipeline's DAG by layer: plain text, Mermaid and Graphviz DOT.

use std::fmt::Write;

use crate::pipeline::Pipeline;
use crate::template::{Block, HumanGate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Text,
    Mermaid,
    Dot,
}

pub fn render(pipeline: &Pipeline, format: GraphFormat) -> String {
    match format {
        GraphFormat::Text => text(pipeline),
        GraphFormat::Mermaid => mermaid(pipeline),
        GraphFormat::Dot => dot(pipeline),
    }
}

fn badges(block: &Block) -> String {
    let mut badges = Vec::new();
    match block.execution.human_gate {
        HumanGate::Before => badges.push("gate:before".to_string()),
        HumanGate::After => badges.push("gate:after".to_string()),
        HumanGate::None => {}
    }
    if let Some(threshold) = &block.execution.threshold {
        badges.push(format!("{} ≥ {}", threshold.metric, threshold.min));
    }
    if let Some(group) = &block.execution.parallel_group {
        badges.push(format!("∥ {group}"));
    }
    badges.push(block.runtime.as_str().to_string());
    badges.join(", ")
}

fn upstream_ids(pipeline: &Pipeline, i: usize) -> Vec<&str> {
    pipeline
        .upstream(i)
        .iter()
        .map(|&u| pipeline.blocks()[u].id.as_str())
        .collect()
}

fn text(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    let template = pipeline.template();
    let _ = writeln!(
        out,
        "{} v{} — {} blocks",
        template.id,
        template.version,
        pipeline.len()
    );
    for (layer, blocks) in pipeline.layers() {
        let _ = writeln!(out, "\n{layer}");
        for i in blocks {
            let block = &pipeline.blocks()[i];
            let _ = writeln!(out, "  {} [{}]", block.id, badges(block));
            let ups = upstream_ids(pipeline, i);
            if !ups.is_empty() {
                let _ = writeln!(out, "    ← {}", ups.join(", "));
            }
        }
    }
    out
}

fn mermaid_id(id: &str) -> String {
    id.replace('-', "_")
}

fn mermaid(pipeline: &Pipeline) -> String {
    let mut out = String::from("flowchart TD\n");
    for (layer, blocks) in pipeline.layers() {
        let _ = writeln!(
            out,
            "  subgraph {}[\"{layer}\"]",
            mermaid_id(&format!("layer_{layer}")).replace('.', "_")
        );
        for i in blocks {
            let block = &pipeline.blocks()[i];
            let shape = if block.execution.human_gate != HumanGate::None {
                format!("{{{{\"{}<br/>{}\"}}}}", block.id, badges(block))
            } else {
                format!("[\"{}<br/>{}\"]", block.id, badges(block))
            };
            let _ = writeln!(out, "    {}{shape}", mermaid_id(&block.id));
        }
        out.push_str("  end\n");
    }
    for i in 0..pipeline.len() {
        for &u in pipeline.upstream(i) {
            let _ = writeln!(
                out,
                "  {} --> {}",
                mermaid_id(&pipeline.blocks()[u].id),
                mermaid_id(&pipeline.blocks()[i].id)
            );
        }
    }
    out
}

fn dot(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", pipeline.template().id);
    out.push_str("  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n");
    for (n, (layer, blocks)) in pipeline.layers().into_iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{n} {{\n    label=\"{layer}\";\n    rank=same;"
        );
        for i in blocks {
            let block = &pipeline.blocks()[i];
            let style = if block.execution.human_gate != HumanGate::None {
                ", shape=hexagon"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "    \"{}\" [label=\"{}\\n{}\"{style}];",
                block.id,
                block.id,
                badges(block)
            );
        }
        out.push_str("  }\n");
    }
    for i in 0..pipeline.len() {
        for &u in pipeline.upstream(i) {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\";",
                pipeline.blocks()[u].id,
                pipeline.blocks()[i].id
            );
        }
    }
    out.push_str("}\n");
    out
}
