//! The pipeline as a graph: blocks in rows by dependency depth, an arrow for
//! every dependency, laid out on the server, so the page needs no script to
//! draw it and a live update swaps it whole like any other region.
//!
//! The layout is a small Sugiyama. A block's row is the longest path to it
//! from a block with no dependencies. An edge that skips rows passes through
//! a placeholder in every row between, so it runs in the gaps between blocks
//! instead of across them. Within a row, blocks and placeholders are ordered
//! by the mean position of their neighbours in the row above, then below (a
//! few sweeps each way untangle most crossings); members of one parallel
//! group are kept side by side; each row is centred.

use factory_core::Pipeline;
use factory_core::run::{BlockStatus, Millis, RunDoc};
use factory_core::template::HumanGate;
use maud::{Markup, html};

use super::render;

pub const NODE_W: f32 = 240.0;
pub const NODE_H: f32 = 50.0;
/// Width a placeholder takes in its row (an edge passing through).
const PASS_W: f32 = 14.0;
const GAP_X: f32 = 22.0;
const GAP_Y: f32 = 46.0;
const MARGIN: f32 = 14.0;
/// Room above the first row for a parallel group's label.
const TOP: f32 = 24.0;
/// Sweeps of the ordering (each one down, then up).
const SWEEPS: usize = 4;

/// Where everything goes, in SVG user units.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub width: f32,
    pub height: f32,
    /// Top-left corner of each block's box, by block index.
    pub nodes: Vec<(f32, f32)>,
    /// Each block's row (0 for blocks with no dependency).
    pub rows: Vec<usize>,
    pub edges: Vec<EdgeRoute>,
    /// Boxes around the members of one parallel group in one row:
    /// (group, x, y, width, height).
    pub groups: Vec<(String, f32, f32, f32, f32)>,
}

/// One dependency: from the upstream block's bottom to the downstream
/// block's top, through one point per row it passes.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeRoute {
    pub from: usize,
    pub to: usize,
    pub points: Vec<(f32, f32)>,
}

/// A vertex of the layered graph: a block, or an edge passing a row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Vertex {
    Block(usize),
    Pass,
}

/// Lays out `pipeline`; `group` gives a block's parallel group, if any.
pub fn layout(pipeline: &Pipeline) -> Layout {
    let n = pipeline.len();
    // A fan-out block's instances are boxed together, like a parallel group.
    let groups: Vec<Option<&str>> = pipeline
        .blocks()
        .iter()
        .enumerate()
        .map(|(i, b)| match pipeline.group_of(i) {
            Some(g) => Some(pipeline.blocks()[g].id.as_str()),
            None => b.execution.parallel_group.as_deref(),
        })
        .collect();
    let mut rows = vec![0usize; n];
    for &i in pipeline.topo_order() {
        rows[i] = pipeline
            .upstream(i)
            .iter()
            .map(|&u| rows[u] + 1)
            .max()
            .unwrap_or(0);
    }
    let depth = rows.iter().copied().max().map_or(0, |r| r + 1);

    // Vertices 0..n are the blocks; placeholders follow.
    let mut kind: Vec<Vertex> = (0..n).map(Vertex::Block).collect();
    let mut row_of: Vec<usize> = rows.clone();
    let mut above: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut below: Vec<Vec<usize>> = vec![Vec::new(); n];
    // Edges from one block share their placeholders row by row (a bus down
    // from the block), so a block whose output many later blocks read adds
    // one line per row, not one per reader.
    let mut passes: std::collections::HashMap<(usize, usize), usize> = Default::default();
    let mut chains: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    for &to in pipeline.topo_order() {
        for &from in pipeline.upstream(to) {
            let mut chain = vec![from];
            for row in rows[from] + 1..rows[to] {
                let v = *passes.entry((from, row)).or_insert_with(|| {
                    kind.push(Vertex::Pass);
                    row_of.push(row);
                    above.push(Vec::new());
                    below.push(Vec::new());
                    kind.len() - 1
                });
                chain.push(v);
            }
            chain.push(to);
            for pair in chain.windows(2) {
                if !below[pair[0]].contains(&pair[1]) {
                    below[pair[0]].push(pair[1]);
                    above[pair[1]].push(pair[0]);
                }
            }
            chains.push((from, to, chain));
        }
    }
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for &i in pipeline.topo_order() {
        order[rows[i]].push(i);
    }
    for v in n..kind.len() {
        order[row_of[v]].push(v);
    }

    let mut position = vec![0usize; kind.len()];
    let index = |order: &[Vec<usize>], position: &mut Vec<usize>| {
        for row in order {
            for (p, &v) in row.iter().enumerate() {
                position[v] = p;
            }
        }
    };
    index(&order, &mut position);
    for _ in 0..SWEEPS {
        for row in order.iter_mut().skip(1) {
            reorder(row, &above, &mut position);
        }
        for row in order.iter_mut().rev().skip(1) {
            reorder(row, &below, &mut position);
        }
    }
    // Members of a parallel group side by side, where the first one is.
    for row in &mut order {
        let first: Vec<usize> = row
            .iter()
            .enumerate()
            .map(|(p, &v)| match kind[v] {
                Vertex::Block(b) => groups[b]
                    .and_then(|g| {
                        row.iter().position(
                            |&w| matches!(kind[w], Vertex::Block(c) if groups[c] == Some(g)),
                        )
                    })
                    .unwrap_or(p),
                Vertex::Pass => p,
            })
            .collect();
        let mut keyed: Vec<(usize, usize, usize)> = row
            .iter()
            .enumerate()
            .map(|(p, &v)| (first[p], p, v))
            .collect();
        keyed.sort();
        *row = keyed.into_iter().map(|(_, _, v)| v).collect();
    }

    let width_of = |v: usize| match kind[v] {
        Vertex::Block(_) => NODE_W,
        Vertex::Pass => PASS_W,
    };
    let row_width = |row: &[usize]| -> f32 {
        row.iter().map(|&v| width_of(v)).sum::<f32>() + GAP_X * row.len().saturating_sub(1) as f32
    };
    let widest = order.iter().map(|r| row_width(r)).fold(0.0, f32::max);
    let mut x = vec![0f32; kind.len()];
    let mut y = vec![0f32; kind.len()];
    for (r, row) in order.iter().enumerate() {
        let mut left = MARGIN + (widest - row_width(row)) / 2.0;
        for &v in row {
            x[v] = left;
            y[v] = TOP + r as f32 * (NODE_H + GAP_Y);
            left += width_of(v) + GAP_X;
        }
    }

    let centre = |v: usize| x[v] + width_of(v) / 2.0;
    let edges = chains
        .into_iter()
        .map(|(from, to, chain)| {
            let mut points = vec![(centre(from), y[from] + NODE_H)];
            for &v in &chain[1..chain.len() - 1] {
                points.push((centre(v), y[v]));
                points.push((centre(v), y[v] + NODE_H));
            }
            points.push((centre(to), y[to]));
            EdgeRoute { from, to, points }
        })
        .collect();

    let mut boxes = Vec::new();
    for row in &order {
        let mut seen: Vec<&str> = Vec::new();
        for &v in row {
            let Vertex::Block(b) = kind[v] else { continue };
            let Some(group) = groups[b] else { continue };
            if seen.contains(&group) {
                continue;
            }
            seen.push(group);
            let members: Vec<usize> = row
                .iter()
                .copied()
                .filter(|&w| matches!(kind[w], Vertex::Block(c) if groups[c] == Some(group)))
                .collect();
            let left = members.iter().map(|&w| x[w]).fold(f32::MAX, f32::min) - 6.0;
            let right = members
                .iter()
                .map(|&w| x[w] + NODE_W)
                .fold(f32::MIN, f32::max)
                + 6.0;
            boxes.push((
                group.to_string(),
                left,
                y[v] - 6.0,
                right - left,
                NODE_H + 12.0,
            ));
        }
    }

    Layout {
        width: widest + 2.0 * MARGIN,
        height: depth as f32 * (NODE_H + GAP_Y) - GAP_Y + TOP + MARGIN,
        nodes: (0..n).map(|i| (x[i], y[i])).collect(),
        rows,
        edges,
        groups: boxes,
    }
}

/// Orders one row by the mean position of each vertex's neighbours in the
/// adjacent row; a vertex with none keeps its place.
fn reorder(row: &mut [usize], neighbours: &[Vec<usize>], position: &mut [usize]) {
    let mut keyed: Vec<(f32, usize, usize)> = row
        .iter()
        .enumerate()
        .map(|(p, &v)| {
            let near = &neighbours[v];
            let key = if near.is_empty() {
                p as f32
            } else {
                near.iter().map(|&w| position[w] as f32).sum::<f32>() / near.len() as f32
            };
            (key, p, v)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (p, (_, _, v)) in keyed.into_iter().enumerate() {
        row[p] = v;
        position[v] = p;
    }
}

/// The SVG path of an edge: vertical tangents at each end, so arrows leave
/// a block's bottom and enter the next one's top.
pub fn path(points: &[(f32, f32)]) -> String {
    let mut d = String::new();
    let Some(&(x0, y0)) = points.first() else {
        return d;
    };
    d.push_str(&format!("M{x0:.0} {y0:.0}"));
    for pair in points.windows(2) {
        let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
        if (ax - bx).abs() < 0.5 {
            d.push_str(&format!(" L{bx:.0} {by:.0}"));
        } else {
            let mid = (ay + by) / 2.0;
            d.push_str(&format!(
                " C{ax:.0} {mid:.0} {bx:.0} {mid:.0} {bx:.0} {by:.0}"
            ));
        }
    }
    d
}

/// What a pending or blocked block waits for, in words (its tooltip).
pub fn waits_for(pipeline: &Pipeline, doc: &RunDoc, i: usize) -> Option<String> {
    let block = &pipeline.blocks()[i];
    let state = doc.blocks.get(&block.id)?;
    if !matches!(state.status, BlockStatus::Pending | BlockStatus::Blocked) {
        return None;
    }
    let open = super::explain::open_upstream(pipeline.template(), doc, &block.id);
    (!open.is_empty()).then(|| format!("waits for {}", open.join(", ")))
}

/// A piece of a block's second line: its text, the class that colours it,
/// and for a running attempt the milliseconds it had run when the page was
/// drawn (the page's script keeps counting from there).
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    text: String,
    class: Option<String>,
    elapsed: Option<u64>,
}

impl Piece {
    fn plain(text: impl Into<String>) -> Piece {
        Piece {
            text: text.into(),
            class: None,
            elapsed: None,
        }
    }
}

/// The second line of a block's box: status, try, how long the latest
/// attempt took (or has run) — for a fan-out block, how many of its
/// instances are done instead — audit badge, flag, gate.
fn meta_line(
    state: &factory_core::run::BlockState,
    audit: Option<(f64, &str)>,
    gate: Option<&str>,
    instances_done: Option<(usize, usize)>,
    now: Millis,
) -> Vec<Piece> {
    let mut status = state.status.as_str().to_string();
    // A gate's tag says why a block waits; without one, say it here.
    if state.status == BlockStatus::Waiting && gate.is_none() {
        status.push_str(" · needs review");
    }
    if state.attempts > 1 {
        status.push_str(&format!(" · try {}", state.attempts));
    }
    let mut parts = vec![Piece::plain(status)];
    if let Some((done, of)) = instances_done {
        parts.push(Piece::plain(format!("· {done}/{of} done")));
    } else if let Some(latest) = state.history.last().filter(|_| !state.awaits_new_pass()) {
        match latest.ended_at {
            Some(end) => parts.push(Piece::plain(format!(
                "· {}",
                render::duration((end - latest.started_at).max(0) as u64)
            ))),
            None if state.status == BlockStatus::Running => {
                let ran = (now - latest.started_at).max(0) as u64;
                parts.push(Piece::plain("·"));
                parts.push(Piece {
                    text: render::duration(ran),
                    class: Some("elapsed".into()),
                    elapsed: Some(ran),
                });
            }
            None => {}
        }
    }
    if let Some((composite, badge)) = audit {
        parts.push(Piece {
            text: badge.to_string(),
            class: Some(format!("badge {}", render::band(composite))),
            elapsed: None,
        });
    }
    if state.audit_flagged && !state.awaits_new_pass() {
        parts.push(Piece::plain("⚑"));
    }
    if let Some(gate) = gate {
        parts.push(Piece {
            text: gate.to_string(),
            class: Some("gate".into()),
            elapsed: None,
        });
    }
    parts
}

/// The graph of a run: boxes coloured by status, linking to each block's
/// workbench; an edge is solid once its upstream block is done. Every SVG
/// element is closed (`{}`, never maud's void `;`): in an HTML page an
/// unclosed `<rect>` or `<path>` swallows the elements after it as children,
/// which are then not drawn.
pub fn svg(doc: &RunDoc, pipeline: &Pipeline, now: Millis) -> Markup {
    let layout = layout(pipeline);
    let blocks = pipeline.blocks();
    let status = |i: usize| {
        doc.blocks
            .get(&blocks[i].id)
            .map_or(BlockStatus::Pending, |s| s.status)
    };
    html! {
        svg.graph role="group" aria-label={"Pipeline graph: " (blocks.len()) " blocks, arrows from each block to the blocks that depend on it"}
            width=(format!("{:.0}", layout.width)) height=(format!("{:.0}", layout.height))
            viewBox=(format!("0 0 {:.0} {:.0}", layout.width, layout.height)) xmlns="http://www.w3.org/2000/svg" {
            defs {
                marker #arrow viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto" {
                    path d="M0 0 L8 4 L0 8 z" class="arrow" {}
                }
            }
            @for (group, x, y, w, h) in &layout.groups {
                g.group.parallel {
                    rect x=(format!("{x:.0}")) y=(format!("{y:.0}")) width=(format!("{w:.0}")) height=(format!("{h:.0}")) rx="8" {}
                    @let fan_out = pipeline.block(group).is_some_and(|b| b.fan_out.is_some());
                    text.group-label x=(format!("{:.0}", x + 6.0)) y=(format!("{:.0}", y - 3.0)) { (if fan_out { "instances of " } else { "parallel: " }) (group) }
                }
            }
            @for edge in &layout.edges {
                path.edge.met[status(edge.from) == BlockStatus::Done]
                    data-from=(blocks[edge.from].id) data-to=(blocks[edge.to].id)
                    d=(path(&edge.points)) marker-end="url(#arrow)" {}
            }
            @for (i, block) in blocks.iter().enumerate() {
                @let (x, y) = layout.nodes[i];
                @if let Some(state) = doc.blocks.get(&block.id) {
                @let waits = waits_for(pipeline, doc, i);
                @let gate = match block.execution.human_gate {
                    HumanGate::Before => Some("gate: before"),
                    HumanGate::After => Some("gate: after"),
                    HumanGate::None => None,
                };
                @let audit = state.latest_audit().filter(|_| !state.awaits_new_pass());
                @let title = render::clip(&block.name, 27);
                @let instances_done = state.instances.as_ref().map(|keys| (keys.iter().filter(|k| doc.blocks.get(&factory_core::run::instance_id(&block.id, k)).is_some_and(|s| s.status == BlockStatus::Done)).count(), keys.len()));
                @let meta = meta_line(state, audit.map(|a| (a.composite, a.badge.as_str())), gate, instances_done, now);
                // The `<title>` is the link's accessible name and its
                // tooltip: what is seen, then what is not (the full name,
                // what it waits for). No aria-label: it would have to repeat
                // the title's text too, which counts as visible.
                @let label = format!("{title} {}{}{}", meta.iter().map(|piece| piece.text.as_str()).collect::<Vec<_>>().join(" "),
                    if title != block.name { format!(", {}", block.name) } else { String::new() },
                    waits.as_deref().map(|w| format!(", {w}")).unwrap_or_default());
                a class={"block " (state.status.as_str())} href={"/runs/" (doc.run_id) "/blocks/" (block.id)}
                    data-block=(block.id) data-status=(state.status.as_str()) {
                    title { (label) " · layer " (block.layer) }
                    // Their size is in the stylesheet (the same for every
                    // block; a 200-block page is 20 KB lighter for it).
                    rect.node x=(format!("{x:.0}")) y=(format!("{y:.0}")) {}
                    rect.stripe x=(format!("{x:.0}")) y=(format!("{y:.0}")) {}
                    text.block-title x=(format!("{:.0}", x + 14.0)) y=(format!("{:.0}", y + 20.0)) { (title) }
                    text.block-meta x=(format!("{:.0}", x + 14.0)) y=(format!("{:.0}", y + 39.0)) {
                        @for (n, piece) in meta.iter().enumerate() {
                            @if n > 0 { " " }
                            @match &piece.class {
                                Some(class) => { tspan class=(class) data-elapsed=[piece.elapsed] { (piece.text) } },
                                None => { (piece.text) },
                            }
                        }
                    }
                }
                }
            }
        }
    }
}

/// The markup's text (for tests that look into it).
#[cfg(test)]
fn markup_text(m: Markup) -> String {
    let maud::PreEscaped(text) = m;
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use factory_core::run::EventRecord;
    use factory_core::{transitions, validate};

    fn pipeline_of(template: &serde_json::Value) -> Pipeline {
        let validated = validate::validate_value(template);
        validated
            .pipeline
            .unwrap_or_else(|| panic!("{:?}", validated.diagnostics))
    }

    fn new_run(pipeline: &Pipeline) -> RunDoc {
        let request = transitions::RunRequest {
            run_id: "r1".into(),
            ..Default::default()
        };
        let created = transitions::create_run(pipeline, &request, &|_| true).unwrap();
        RunDoc::from_created(&EventRecord {
            seq: 1,
            at: 0,
            actor: "test".into(),
            event: created,
        })
        .unwrap()
    }

    fn pipeline(blocks: &[(&str, &[&str], Option<&str>)]) -> Pipeline {
        let blocks: Vec<serde_json::Value> = blocks
            .iter()
            .map(|(id, deps, group)| {
                let mut block = serde_json::json!({
                    "id": id, "name": format!("Block {id}"), "layer": "L1", "type": "build",
                    "runtime": "builtin", "inputs": {"config": {"builtin": "noop"},
                        "depends": deps.iter().map(|d| serde_json::json!({"block": d, "key": "out"})).collect::<Vec<_>>()},
                    "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}
                });
                if let Some(g) = group {
                    block["execution"] = serde_json::json!({"parallel_group": g});
                }
                block
            })
            .collect();
        let template =
            serde_json::json!({"id": "t", "name": "T", "version": "1.0.0", "blocks": blocks});
        pipeline_of(&template)
    }

    #[test]
    fn rows_follow_the_longest_path_and_long_edges_bend_through_each_row() {
        // a → b → c, and a → c directly: c sits two rows below a, and the
        // direct edge passes row 1 beside b instead of through it.
        let p = pipeline(&[
            ("a", &[], None),
            ("b", &["a"], None),
            ("c", &["a", "b"], None),
        ]);
        let l = layout(&p);
        assert_eq!(l.rows, vec![0, 1, 2]);
        let long = l.edges.iter().find(|e| (e.from, e.to) == (0, 2)).unwrap();
        assert_eq!(long.points.len(), 4, "{:?}", long.points);
        let (bx, _) = l.nodes[1];
        let pass_x = long.points[1].0;
        assert!(
            pass_x < bx || pass_x > bx + NODE_W,
            "the long edge passes beside b, not through it: {pass_x} vs {bx}..{}",
            bx + NODE_W
        );
        // Every edge starts at its source's bottom and ends at its target's top.
        for e in &l.edges {
            let (sx, sy) = l.nodes[e.from];
            let (tx, ty) = l.nodes[e.to];
            assert_eq!(e.points[0], (sx + NODE_W / 2.0, sy + NODE_H));
            assert_eq!(*e.points.last().unwrap(), (tx + NODE_W / 2.0, ty));
        }
    }

    #[test]
    fn no_two_blocks_overlap_and_everything_fits_the_canvas() {
        let p = pipeline(&[
            ("a", &[], None),
            ("b", &[], None),
            ("c", &["a"], Some("g")),
            ("d", &["b"], None),
            ("e", &["a"], Some("g")),
            ("f", &["c", "d", "e"], None),
        ]);
        let l = layout(&p);
        for i in 0..l.nodes.len() {
            let (x, y) = l.nodes[i];
            assert!(x >= 0.0 && y >= 0.0 && x + NODE_W <= l.width && y + NODE_H <= l.height);
            for j in i + 1..l.nodes.len() {
                let (u, v) = l.nodes[j];
                let apart =
                    x + NODE_W <= u || u + NODE_W <= x || y + NODE_H <= v || v + NODE_H <= y;
                assert!(apart, "blocks {i} and {j} overlap");
            }
        }
        // The two members of group g are side by side in one box.
        assert_eq!(l.groups.len(), 1);
        let (name, gx, _, gw, _) = &l.groups[0];
        assert_eq!(name, "g");
        for member in [2, 4] {
            assert!(l.nodes[member].0 >= *gx && l.nodes[member].0 + NODE_W <= gx + gw);
        }
        assert!(
            !(l.nodes[3].0 > *gx && l.nodes[3].0 < gx + gw),
            "d is outside the group box"
        );
    }

    #[test]
    fn ordering_untangles_a_crossing_that_template_order_makes() {
        // Template order puts x's child last and y's child first: sweeping
        // reorders the second row so the two edges do not cross.
        let p = pipeline(&[
            ("x", &[], None),
            ("y", &[], None),
            ("cy", &["y"], None),
            ("cx", &["x"], None),
        ]);
        let l = layout(&p);
        let (x, y) = (l.nodes[0].0, l.nodes[1].0);
        let (cx, cy) = (l.nodes[3].0, l.nodes[2].0);
        assert_eq!(x < y, cx < cy, "children follow their parents' order");
    }

    #[test]
    fn a_200_block_pipeline_lays_out_without_overlaps_and_with_every_edge() {
        let p =
            pipeline_of(&serde_json::from_str(&factory_engine::fixtures::layered(20, 10)).unwrap());
        let l = layout(&p);
        let dependencies: usize = (0..p.len()).map(|i| p.upstream(i).len()).sum();
        assert_eq!(l.edges.len(), dependencies);
        let mut boxes = l.nodes.clone();
        boxes.sort_by(|a, b| (a.1, a.0).partial_cmp(&(b.1, b.0)).unwrap());
        for pair in boxes.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            assert!(y0 != y1 || x0 + NODE_W <= x1, "overlap at {pair:?}");
        }
        for e in &l.edges {
            for w in e.points.windows(2) {
                assert!(w[0].1 <= w[1].1, "edges only run downwards: {:?}", e.points);
            }
        }
    }

    #[test]
    fn the_stylesheet_sizes_boxes_as_the_layout_does() {
        let css = super::super::CSS;
        assert!(css.contains(&format!(
            "svg.graph .node {{ fill: var(--panel); stroke: var(--line); width: {NODE_W:.0}px; height: {NODE_H:.0}px;"
        )));
        assert!(css.contains(&format!("width: 6px; height: {NODE_H:.0}px;")));
    }

    #[test]
    fn paths_are_straight_when_aligned_and_curved_between_columns() {
        assert_eq!(path(&[(10.0, 0.0), (10.0, 50.0)]), "M10 0 L10 50");
        assert_eq!(
            path(&[(0.0, 0.0), (100.0, 40.0)]),
            "M0 0 C0 20 100 20 100 40"
        );
        assert_eq!(path(&[]), "");
    }

    #[test]
    fn long_names_are_clipped_and_the_full_name_is_in_the_title() {
        assert_eq!(render::clip("short", 27), "short");
        let long = "Design System Extractor With A Long Tail";
        assert_eq!(render::clip(long, 10).chars().count(), 10);
        assert!(render::clip(long, 10).ends_with('…'));
        let p = pipeline(&[("a", &[], None)]);
        let mut template = p.template().clone();
        template.blocks[0].name = long.to_string();
        let p = pipeline_of(&serde_json::to_value(&template).unwrap());
        let doc = new_run(&p);
        let text = markup_text(svg(&doc, &p, 0));
        assert!(
            text.contains(&format!(
                "<title>{} pending, {long}",
                render::clip(long, 27)
            )),
            "{text}"
        );
        assert!(text.contains("data-block=\"a\""));
        for element in ["rect", "path", "text"] {
            assert_eq!(
                text.matches(&format!("<{element} ")).count(),
                text.matches(&format!("</{element}>")).count(),
                "every <{element}> is closed"
            );
        }
    }
}
