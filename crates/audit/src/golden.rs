//! A golden example read once: D1, D3 and the caps all compare a JSON
//! artifact with the same parsed value and shape, so it is parsed and
//! measured on first use and shared, instead of once per dimension.

use std::cell::OnceCell;

use serde_json::Value;

use crate::json_shape::GoldenShape;

/// The golden example of one artifact.
pub struct Golden<'a> {
    pub bytes: &'a [u8],
    json: OnceCell<Option<Value>>,
    shape: OnceCell<Option<GoldenShape>>,
}

impl<'a> Golden<'a> {
    pub fn new(bytes: &'a [u8]) -> Golden<'a> {
        Golden {
            bytes,
            json: OnceCell::new(),
            shape: OnceCell::new(),
        }
    }

    /// The parsed value, or `None` when the example is not JSON.
    pub fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.bytes).ok())
            .as_ref()
    }

    /// What the example promises consumers, when it is JSON.
    pub fn shape(&self) -> Option<&GoldenShape> {
        self.shape
            .get_or_init(|| self.json().map(GoldenShape::of))
            .as_ref()
    }
}
