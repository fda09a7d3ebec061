//! The validated pipeline: a template whose graph is known to be a DAG.
//!
//! Only [`crate::validate`] builds a [`Pipeline`], so holding one is proof that ids
//! are unique, every dependency resolves and there is no cycle. Graph queries use
//! block indices (positions in the template) internally and keep deterministic
//! order everywhere: ties are broken by layer, then by template position, so
//! snapshots and event logs are stable across runs.

use std::collections::{BTreeMap, BTreeSet};

use crate::template::{Autonomy, Block, HumanGate, Template};

#[derive(Debug, Clone)]
pub struct Pipeline {
    template: Template,
    index: BTreeMap<String, usize>,
    upstream: Vec<Vec<usize>>,
    downstream: Vec<Vec<usize>>,
    topo: Vec<usize>,
    /// Set for a template of the stream pattern.
    stream: Option<crate::stream::StreamPlan>,
    /// Blocks whose trigger starts runs (dag-batch templates only).
    starters: Vec<crate::starter::Starter>,
    /// How many blocks the template has; instances come after them.
    base_len: usize,
    /// Expanded fan-out blocks → their instances (their only upstream).
    members: BTreeMap<usize, Vec<usize>>,
    /// Instance → its fan-out block.
    group_of: BTreeMap<usize, usize>,
}

impl Pipeline {
    /// Builds the graph. Callers must have checked ids and references; a cycle
    /// is reported as the path of block ids that closes it.
    pub(crate) fn build(template: Template) -> Result<Pipeline, Vec<String>> {
        Pipeline::build_with(template, BTreeMap::new())
    }

    /// [`Pipeline::build`], where each of `members`' fan-out blocks waits
    /// for its instances instead of its declared dependencies (which its
    /// instances wait for).
    fn build_with(
        template: Template,
        members: BTreeMap<usize, Vec<usize>>,
    ) -> Result<Pipeline, Vec<String>> {
        let index: BTreeMap<String, usize> = template
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id.clone(), i))
            .collect();
        let n = template.blocks.len();
        let mut upstream = vec![Vec::new(); n];
        let mut downstream = vec![Vec::new(); n];
        for (i, block) in template.blocks.iter().enumerate() {
            let mut seen = BTreeSet::new();
            let declared = block
                .inputs
                .depends
                .iter()
                .filter_map(|dep| index.get(&dep.block).copied());
            let from: Vec<usize> = match members.get(&i) {
                Some(instances) => instances.clone(),
                None => declared.collect(),
            };
            for j in from {
                if seen.insert(j) {
                    upstream[i].push(j);
                    downstream[j].push(i);
                }
            }
        }
        let group_of = members
            .iter()
            .flat_map(|(&g, instances)| instances.iter().map(move |&m| (m, g)))
            .collect();
        let base_len = n - members.values().map(Vec::len).sum::<usize>();
        let layer_rank = layer_ranks(&template);
        let topo = match toposort(&upstream, &downstream, &layer_rank) {
            Ok(order) => order,
            Err(cycle) => {
                return Err(cycle
                    .into_iter()
                    .map(|i| template.blocks[i].id.clone())
                    .collect());
            }
        };
        let stream = crate::stream::plan(&template).ok().flatten();
        let starters = crate::starter::starters(&template);
        Ok(Pipeline {
            template,
            index,
            upstream,
            downstream,
            topo,
            stream,
            starters,
            base_len,
            members,
            group_of,
        })
    }

    /// The run's graph: this template's, with each fan-out block the run
    /// has expanded followed by its instances (`<block>[<key>]`, copies of
    /// the block). None when the run has expanded nothing, so the
    /// template's own pipeline serves.
    pub fn for_run(&self, doc: &crate::run::RunDoc) -> Option<Pipeline> {
        let base = &self.template.blocks[..self.base_len];
        let expanded: Vec<(usize, &Vec<String>)> = base
            .iter()
            .enumerate()
            .filter(|(_, b)| b.fan_out.is_some())
            .filter_map(|(i, b)| Some((i, doc.blocks.get(&b.id)?.instances.as_ref()?)))
            .collect();
        if expanded.is_empty() {
            return None;
        }
        let mut template = self.template.clone();
        template.blocks.truncate(self.base_len);
        let mut members = BTreeMap::new();
        for (g, keys) in expanded {
            let group = &base[g];
            let mut instances = Vec::with_capacity(keys.len());
            for key in keys {
                let mut block = group.clone();
                block.id = crate::run::instance_id(&group.id, key);
                block.name = format!("{} [{key}]", group.name);
                block.fan_out = None;
                instances.push(template.blocks.len());
                template.blocks.push(block);
            }
            members.insert(g, instances);
        }
        // Instances copy a block of a valid graph and add only edges into
        // their group: no cycle can appear.
        Pipeline::build_with(template, members).ok()
    }

    /// For an expanded fan-out block: its instances.
    pub fn members(&self, i: usize) -> Option<&[usize]> {
        self.members.get(&i).map(Vec::as_slice)
    }

    /// For an instance: its fan-out block.
    pub fn group_of(&self, i: usize) -> Option<usize> {
        self.group_of.get(&i).copied()
    }

    /// The blocks a reset of `targets` resets — the targets and everything
    /// downstream of them — in topological order, each with whether it is a
    /// fan-out block to expand anew: one that is a target itself, or whose
    /// declared dependencies (where its list comes from) are reset. Such a
    /// block's instances are reset with it, flagged the same way (they leave
    /// the graph until it expands again). Retrying one instance resets
    /// its group (it waits again) without expanding it anew.
    pub fn reset_plan(&self, targets: &[usize]) -> Vec<(usize, bool)> {
        let mut set: BTreeSet<usize> = targets.iter().copied().collect();
        for &t in targets {
            set.extend(self.descendants(t));
        }
        let mut regroup = BTreeSet::new();
        for &i in &set {
            let block = &self.template.blocks[i];
            if block.fan_out.is_none() {
                continue;
            }
            let declared_reset = block
                .inputs
                .depends
                .iter()
                .filter_map(|d| self.index_of(&d.block))
                .any(|u| set.contains(&u));
            if targets.contains(&i) || declared_reset {
                regroup.insert(i);
            }
        }
        for g in regroup.clone() {
            let members = self.members(g).unwrap_or_default();
            set.extend(members);
            regroup.extend(members);
        }
        self.topo
            .iter()
            .filter(|i| set.contains(i))
            .map(|&i| (i, regroup.contains(&i)))
            .collect()
    }

    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The stream plan, for a template of the stream pattern (its blocks
    /// move records; it has no runs).
    pub fn stream(&self) -> Option<&crate::stream::StreamPlan> {
        self.stream.as_ref()
    }

    /// The blocks whose `cron` or `event` trigger starts runs of this
    /// (dag-batch) template.
    pub fn starters(&self) -> &[crate::starter::Starter] {
        &self.starters
    }

    pub fn blocks(&self) -> &[Block] {
        &self.template.blocks
    }

    pub fn len(&self) -> usize {
        self.template.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.template.blocks.is_empty()
    }

    pub fn index_of(&self, block_id: &str) -> Option<usize> {
        self.index.get(block_id).copied()
    }

    pub fn block(&self, block_id: &str) -> Option<&Block> {
        self.index_of(block_id).map(|i| &self.template.blocks[i])
    }

    /// Distinct upstream blocks of block `i`, in declaration order.
    pub fn upstream(&self, i: usize) -> &[usize] {
        &self.upstream[i]
    }

    pub fn downstream(&self, i: usize) -> &[usize] {
        &self.downstream[i]
    }

    /// A topological order; among blocks that are free at the same time, the
    /// lower layer and then the earlier template position comes first.
    pub fn topo_order(&self) -> &[usize] {
        &self.topo
    }

    /// Every block reachable downstream of `i` (not including `i`), in topological order.
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut stack = vec![i];
        while let Some(current) = stack.pop() {
            for &next in &self.downstream[current] {
                if !seen[next] {
                    seen[next] = true;
                    stack.push(next);
                }
            }
        }
        self.topo.iter().copied().filter(|&j| seen[j]).collect()
    }

    /// Blocks grouped by layer, layers in natural order (`L0 < L0.25 < L1 < L2.5 < L10`).
    pub fn layers(&self) -> Vec<(String, Vec<usize>)> {
        let mut layers: BTreeMap<(LayerKey, String), Vec<usize>> = BTreeMap::new();
        for (i, block) in self.template.blocks.iter().enumerate() {
            layers
                .entry((LayerKey::parse(&block.layer), block.layer.clone()))
                .or_default()
                .push(i);
        }
        layers
            .into_iter()
            .map(|((_, name), blocks)| (name, blocks))
            .collect()
    }

    /// The autonomy level a block has when a run picks no profile: the
    /// template's own behaviour.
    pub fn default_autonomy(&self, i: usize) -> Autonomy {
        match self.template.blocks[i].execution.human_gate {
            HumanGate::None => Autonomy::Auto,
            HumanGate::Before | HumanGate::After => Autonomy::Gate,
        }
    }
}

/// Sort key for layer labels: numeric where the label is `L<number>`.
#[derive(Debug, Clone, PartialEq)]
struct LayerKey(Option<f64>);

impl Eq for LayerKey {}

// Must agree with `Ord`: a derived `PartialOrd` would put `None` (non-numeric
// labels) first, and sorts (which use `<`) would disagree with `BTreeMap` and
// `binary_search` (which use `cmp`).
impl PartialOrd for LayerKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LayerKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.0, other.0) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    }
}

impl LayerKey {
    fn parse(layer: &str) -> LayerKey {
        let digits = layer.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        LayerKey(digits.parse::<f64>().ok().filter(|v| v.is_finite()))
    }
}

fn layer_ranks(template: &Template) -> Vec<usize> {
    let mut keys: Vec<(LayerKey, String)> = template
        .blocks
        .iter()
        .map(|b| (LayerKey::parse(&b.layer), b.layer.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    template
        .blocks
        .iter()
        .map(|b| {
            let key = (LayerKey::parse(&b.layer), b.layer.clone());
            keys.binary_search(&key).unwrap_or(0)
        })
        .collect()
}

/// Kahn's algorithm with a deterministic priority (layer rank, position).
/// On a cycle, returns one cycle as a closed path `[a, b, …, a]`.
fn toposort(
    upstream: &[Vec<usize>],
    downstream: &[Vec<usize>],
    layer_rank: &[usize],
) -> Result<Vec<usize>, Vec<usize>> {
    let n = upstream.len();
    let mut indegree: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut free: BTreeSet<(usize, usize)> = (0..n)
        .filter(|&i| indegree[i] == 0)
        .map(|i| (layer_rank[i], i))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some((rank, i)) = free.pop_first() {
        let _ = rank;
        order.push(i);
        for &j in &downstream[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                free.insert((layer_rank[j], j));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    Err(find_cycle(upstream, &indegree))
}

/// Walks upstream edges among the blocks Kahn could not free; every such block
/// has an unfreed predecessor, so the walk must revisit a block, closing a cycle.
fn find_cycle(upstream: &[Vec<usize>], indegree: &[usize]) -> Vec<usize> {
    let Some(start) = (0..upstream.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    let mut position: BTreeMap<usize, usize> = BTreeMap::new();
    let mut path = Vec::new();
    let mut current = start;
    loop {
        if let Some(&at) = position.get(&current) {
            // path[at..] is the cycle walked against edge direction; reverse it
            // so it reads in dependency order (a -> b means b depends on a).
            let mut cycle: Vec<usize> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return cycle;
        }
        position.insert(current, path.len());
        path.push(current);
        match upstream[current].iter().find(|&&u| indegree[u] > 0) {
            Some(&next) => current = next,
            None => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_keys_sort_naturally() {
        let mut layers = vec!["L10", "L2.5", "L0.25", "L0", "misc", "L1"];
        layers.sort_by_key(|l| (LayerKey::parse(l), l.to_string()));
        assert_eq!(layers, vec!["L0", "L0.25", "L1", "L2.5", "L10", "misc"]);
    }

    #[test]
    fn cycle_is_reported_as_a_closed_path() {
        // 0 -> 1 -> 2 -> 0, and 3 hangs off 2.
        let upstream = vec![vec![2], vec![0], vec![1], vec![2]];
        let mut downstream = vec![Vec::new(); 4];
        for (i, ups) in upstream.iter().enumerate() {
            for &u in ups {
                downstream[u].push(i);
            }
        }
        let cycle = toposort(&upstream, &downstream, &[0, 0, 0, 0]).unwrap_err();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4);
        for pair in cycle.windows(2) {
            // Each step follows a real edge: pair[1] depends on pair[0].
            assert!(upstream[pair[1]].contains(&pair[0]), "{cycle:?}");
        }
    }
}
