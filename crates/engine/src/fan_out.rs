//! The IO half of a fan-out block's attempt: fetching the value its list
//! comes from. What the list makes is decided purely
//! ([`factory_core::fan_out::expand`]) when the attempt is recorded.

use factory_core::fan_out::source_label;
use factory_core::run::RunDoc;
use factory_core::template::Block;
use factory_store::Store;
use serde_json::Value;

/// Whether starting `block` means reading its list rather than running it:
/// a fan-out block not expanded in this pass.
pub(crate) fn expands(block: &Block, doc: &RunDoc) -> bool {
    block.fan_out.is_some()
        && doc
            .blocks
            .get(&block.id)
            .is_some_and(|state| state.instances.is_none())
}

/// The param's value, or the dependency's JSON artifact, that holds the list.
pub(crate) async fn read_source(
    store: &dyn Store,
    doc: &RunDoc,
    block: &Block,
) -> Result<Value, String> {
    let Some(fan_out) = &block.fan_out else {
        return Err(format!("block `{}` has no `fan_out`", block.id));
    };
    let over = &fan_out.over;
    let label = source_label(over);
    if let Some(param) = &over.param {
        let value = doc.params.get(param).ok_or_else(|| {
            format!(
                "block `{}`: the list to fan out over, {label}, was not given to this run; pass it with --param {param}='[\"a\", \"b\"]'",
                block.id
            )
        })?;
        // The CLI and the workbench's form pass every param as text: a
        // list arrives as its JSON.
        return Ok(match value {
            Value::String(text) => serde_json::from_str(text)
                .ok()
                .filter(|v: &Value| v.is_array() || v.is_object())
                .unwrap_or_else(|| value.clone()),
            other => other.clone(),
        });
    }
    let (Some(from), Some(artifact)) = (&over.block, &over.artifact) else {
        return Err(format!(
            "block `{}`: `fan_out.over` names no list",
            block.id
        ));
    };
    let found = doc.dependency_artifacts(from, artifact)?;
    let [(_, reference)] = found.as_slice() else {
        return Err(format!(
            "block `{}`: the list to fan out over, {label}, is not one artifact ({} found)",
            block.id,
            found.len()
        ));
    };
    let bytes = store
        .get_blob(&reference.hash)
        .await
        .map_err(|error| format!("cannot read `{from}.{artifact}`: {error}"))?;
    serde_json::from_slice(&bytes).map_err(|error| {
        format!(
            "block `{}`: the list to fan out over, {label}, is not JSON: {error}",
            block.id
        )
    })
}
