//! JSON paths, shapes and prose: what D1 and D3 compare against a golden
//! example, and where D2, D4 and D5 find the words inside a JSON artifact.
//!
//! Paths come in two spellings: concrete (`$.frameworks[3].steps`) to point an
//! operator at one place, and normalised (`$.frameworks[*].steps`) to line up
//! every instance of a place with the golden example's instances.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::text::count_words;

/// JSON types as bits, so a golden path seen with several types is one mask.
pub const NULL: u8 = 1;
pub const BOOLEAN: u8 = 2;
pub const NUMBER: u8 = 4;
pub const STRING: u8 = 8;
pub const ARRAY: u8 = 16;
pub const OBJECT: u8 = 32;

/// The type bit of `value`.
pub fn type_bit(value: &Value) -> u8 {
    match value {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Number(_) => NUMBER,
        Value::String(_) => STRING,
        Value::Array(_) => ARRAY,
        Value::Object(_) => OBJECT,
    }
}

/// `"array"`, `"string or null"`.
pub fn type_names(mask: u8) -> String {
    let names = [
        (NULL, "null"),
        (BOOLEAN, "boolean"),
        (NUMBER, "number"),
        (STRING, "string"),
        (ARRAY, "array"),
        (OBJECT, "object"),
    ];
    let present: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| mask & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    present.join(" or ")
}

/// A path being walked, in both spellings, grown and shrunk in place so a walk
/// allocates nothing per node.
#[derive(Debug, Clone)]
pub struct JsonPath {
    pub concrete: String,
    pub normalised: String,
}

impl JsonPath {
    pub fn root() -> JsonPath {
        JsonPath {
            concrete: "$".to_string(),
            normalised: "$".to_string(),
        }
    }

    fn push_key(&mut self, key: &str) -> (usize, usize) {
        let mark = (self.concrete.len(), self.normalised.len());
        append_key(&mut self.concrete, key);
        append_key(&mut self.normalised, key);
        mark
    }

    fn push_index(&mut self, index: usize) -> (usize, usize) {
        let mark = (self.concrete.len(), self.normalised.len());
        self.concrete.push('[');
        push_decimal(&mut self.concrete, index);
        self.concrete.push(']');
        self.normalised.push_str("[*]");
        mark
    }

    fn pop(&mut self, mark: (usize, usize)) {
        self.concrete.truncate(mark.0);
        self.normalised.truncate(mark.1);
    }
}

/// Appends `index` in decimal: every array item of a walk does this, and the
/// formatting machinery costs more than the digits.
fn push_decimal(path: &mut String, mut index: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (index % 10) as u8;
        index /= 10;
        if index == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        path.push(char::from(digit));
    }
}

/// Appends `.key`, or `["key"]` when the key is not a plain identifier.
pub fn append_key(path: &mut String, key: &str) {
    let is_identifier = key
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && key
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_');
    if is_identifier {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}")));
        path.push(']');
    }
}

/// Visits every node, parents before children, in document order.
pub fn walk(value: &Value, visit: &mut impl FnMut(&Value, &JsonPath)) {
    let mut path = JsonPath::root();
    walk_at(value, &mut path, visit);
}

fn walk_at(value: &Value, path: &mut JsonPath, visit: &mut impl FnMut(&Value, &JsonPath)) {
    visit(value, path);
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let mark = path.push_index(index);
                walk_at(item, path, visit);
                path.pop(mark);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                let mark = path.push_key(key);
                walk_at(member, path, visit);
                path.pop(mark);
            }
        }
        _ => {}
    }
}

/// Item counts seen at one normalised array path of the golden example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRange {
    pub min: usize,
    pub max: usize,
}

impl CountRange {
    /// `"7"` or `"5–8"`.
    pub fn describe(&self) -> String {
        if self.min == self.max {
            self.min.to_string()
        } else {
            format!("{}\u{2013}{}", self.min, self.max)
        }
    }
}

/// What a golden example promises consumers, by normalised path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoldenShape {
    pub root_type: u8,
    /// Item counts per array path.
    pub arrays: BTreeMap<String, CountRange>,
    /// Keys present in every golden object at the path (the required keys).
    pub required_keys: BTreeMap<String, BTreeSet<String>>,
    /// Types seen at each path.
    pub types: BTreeMap<String, u8>,
}

impl GoldenShape {
    pub fn of(golden: &Value) -> GoldenShape {
        let mut shape = GoldenShape {
            root_type: type_bit(golden),
            ..GoldenShape::default()
        };
        walk(golden, &mut |value, path| {
            *shape.types.entry(path.normalised.clone()).or_insert(0) |= type_bit(value);
            match value {
                Value::Array(items) => {
                    let range = shape
                        .arrays
                        .entry(path.normalised.clone())
                        .or_insert(CountRange {
                            min: items.len(),
                            max: items.len(),
                        });
                    range.min = range.min.min(items.len());
                    range.max = range.max.max(items.len());
                }
                Value::Object(members) => match shape.required_keys.get_mut(&path.normalised) {
                    Some(required) => required.retain(|key| members.contains_key(key)),
                    None => {
                        shape
                            .required_keys
                            .insert(path.normalised.clone(), members.keys().cloned().collect());
                    }
                },
                _ => {}
            }
        });
        shape.required_keys.retain(|_, keys| !keys.is_empty());
        shape
    }

    /// True when the golden example has anything to require of objects.
    pub fn has_required_keys(&self) -> bool {
        !self.required_keys.is_empty()
    }
}

/// The words inside a JSON document: every string value as its own paragraph
/// (so sentences never run across values), with the path of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonProse {
    /// String values joined by blank lines.
    pub text: String,
    /// Byte offset in `text` where each string value starts.
    pub segment_starts: Vec<usize>,
    /// Concrete paths of the string values, concatenated (one allocation, not one per value).
    paths: String,
    /// End of each value's path in `paths`.
    path_ends: Vec<usize>,
    /// Object keys and numbers, one per line: not prose, but content that
    /// shows what the document talks about (D5).
    pub keys_and_numbers: String,
    /// Words in each string value, in segment order.
    pub string_word_counts: Vec<usize>,
}

impl JsonProse {
    pub fn of(value: &Value) -> JsonProse {
        let mut prose = JsonProse::default();
        walk(value, &mut |node, path| match node {
            Value::String(text) => {
                if !prose.text.is_empty() {
                    prose.text.push_str("\n\n");
                }
                prose.segment_starts.push(prose.text.len());
                prose.paths.push_str(&path.concrete);
                prose.path_ends.push(prose.paths.len());
                prose.string_word_counts.push(count_words(text));
                prose.text.push_str(text);
            }
            Value::Number(number) => {
                prose.keys_and_numbers.push_str(&number.to_string());
                prose.keys_and_numbers.push('\n');
            }
            Value::Object(members) => {
                for key in members.keys() {
                    prose.keys_and_numbers.push_str(key);
                    prose.keys_and_numbers.push('\n');
                }
            }
            _ => {}
        });
        prose
    }

    /// The path of the string value holding byte `offset` of [`JsonProse::text`].
    pub fn path_at(&self, offset: usize) -> &str {
        let index = match self.segment_starts.binary_search(&offset) {
            Ok(index) => index,
            Err(index) => index.saturating_sub(1),
        };
        self.segment_path(index)
    }

    /// The path of string value number `index` (`$` when out of range).
    pub fn segment_path(&self, index: usize) -> &str {
        let end = self.path_ends.get(index).copied().unwrap_or(0);
        let start = if index == 0 {
            0
        } else {
            self.path_ends.get(index - 1).copied().unwrap_or(0)
        };
        match self.paths.get(start..end) {
            Some(path) if !path.is_empty() => path,
            _ => "$",
        }
    }
}

/// Keys whose string values name or identify things that downstream output
/// should refer back to (D5).
fn is_name_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "id" | "name" | "title" | "slug" | "key" | "label" | "term" | "phrase"
    ) || lower.ends_with("_id")
        || lower.ends_with("_name")
        || lower.ends_with("-id")
        || lower.ends_with("-name")
        || key.ends_with("Id")
        || key.ends_with("Name")
}

/// Longer values under a name-like key are descriptions, not names.
const MAX_NAME_CHARS: usize = 60;
const MAX_NAME_WORDS: usize = 6;

/// Distinct (case-insensitively) names and ids in document order: 3–60
/// characters and at most 6 words each.
pub fn names_and_ids(value: &Value) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    walk(value, &mut |node, _| {
        if let Value::Object(members) = node {
            for (key, member) in members {
                if let Value::String(name) = member {
                    let name = name.trim();
                    let length = name.chars().count();
                    let words = name.split_whitespace().count();
                    if is_name_key(key)
                        && (3..=MAX_NAME_CHARS).contains(&length)
                        && words <= MAX_NAME_WORDS
                        && seen.insert(name.to_lowercase())
                    {
                        names.push(name.to_string());
                    }
                }
            }
        }
    });
    names
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_in_both_spellings() {
        let value = json!({"frameworks": [{"steps": ["a", "b"]}], "odd key": 1});
        let mut seen = Vec::new();
        walk(&value, &mut |_, path| {
            seen.push((path.concrete.clone(), path.normalised.clone()))
        });
        let concrete: Vec<_> = seen.iter().map(|(concrete, _)| concrete.as_str()).collect();
        assert_eq!(
            concrete,
            vec![
                "$",
                "$.frameworks",
                "$.frameworks[0]",
                "$.frameworks[0].steps",
                "$.frameworks[0].steps[0]",
                "$.frameworks[0].steps[1]",
                "$[\"odd key\"]"
            ]
        );
        assert_eq!(seen[4].1, "$.frameworks[*].steps[*]");
    }

    #[test]
    fn golden_shape_keeps_ranges_and_common_keys() {
        let golden = json!({"frameworks": [
            {"name": "A", "steps": [1, 2, 3], "origin": "x"},
            {"name": "B", "steps": [1, 2, 3, 4, 5]}
        ]});
        let shape = GoldenShape::of(&golden);
        assert_eq!(
            shape.arrays["$.frameworks[*].steps"],
            CountRange { min: 3, max: 5 }
        );
        assert_eq!(
            shape.arrays["$.frameworks[*].steps"].describe(),
            "3\u{2013}5"
        );
        let required: Vec<_> = shape.required_keys["$.frameworks[*]"]
            .iter()
            .cloned()
            .collect();
        assert_eq!(required, vec!["name", "steps"]);
        assert_eq!(shape.types["$.frameworks[*].steps[*]"], NUMBER);
    }

    #[test]
    fn prose_maps_offsets_to_paths() {
        let prose = JsonProse::of(&json!({"a": "first value", "b": {"c": ["second", 42]}}));
        assert_eq!(prose.text, "first value\n\nsecond");
        assert_eq!(prose.path_at(3), "$.a");
        assert_eq!(prose.path_at(14), "$.b.c[0]");
        assert_eq!(prose.keys_and_numbers, "a\nb\nc\n42\n");
    }

    #[test]
    fn names() {
        let value = json!({"name": "Anchor Ladder", "items": [{"id": "calibrated-silence"}, {"name": "anchor ladder"}, {"title": "x"}]});
        assert_eq!(
            names_and_ids(&value),
            vec!["Anchor Ladder", "calibrated-silence"]
        );
    }
}
