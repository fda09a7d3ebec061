use serde_json::json;

use super::*;
use crate::template::{ListSource, Need};

fn spec(key: Option<&str>, max: u32, need: Need, pointer: Option<&str>) -> FanOut {
    FanOut {
        over: ListSource {
            param: Some("items".into()),
            block: None,
            artifact: None,
            pointer: pointer.map(str::to_string),
        },
        key: key.map(str::to_string),
        max,
        need,
    }
}

#[test]
fn keys_come_from_the_named_field_the_item_or_its_position() {
    let items = json!([
        {"name": "Competitive Landscape!", "x": 1},
        "Gap analysis",
        {"other": "no name"},
        7,
        {"name": ""}
    ]);
    let made = instances("lens", &spec(Some("name"), 10, Need::All, None), &items).unwrap();
    let keys: Vec<&str> = made.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["competitive-landscape", "gap-analysis", "2", "7", "4"]
    );
    assert_eq!(made[0].id, "lens[competitive-landscape]");
    assert_eq!(made[0].item, items[0]);
    let long = key_of(&json!("a".repeat(500)), None, 0);
    assert_eq!(long.len(), MAX_KEY_LEN);
}

#[test]
fn an_unusable_list_says_what_is_wrong_and_where() {
    let over = |value: serde_json::Value, s: FanOut| instances("lens", &s, &value).unwrap_err();
    let error = over(json!({"a": 1}), spec(None, 10, Need::All, None));
    assert!(
        error.contains("param `items`") && error.contains("an object, not a JSON array"),
        "{error}"
    );
    let error = over(
        json!({"plan": []}),
        spec(None, 10, Need::All, Some("/missing")),
    );
    assert!(error.contains("at `/missing`: nothing there"), "{error}");
    let error = over(json!([1, 2, 3]), spec(None, 2, Need::All, None));
    assert!(
        error.contains("has 3 items, more than `fan_out.max` (2)"),
        "{error}"
    );
    let error = over(json!([1]), spec(None, 5, Need::AtLeast(2), None));
    assert!(error.contains("fewer than the 2"), "{error}");
    let error = over(json!([]), spec(None, 5, Need::Any, None));
    assert!(error.contains("fewer than the 1"), "{error}");
    let error = over(json!(["A b", "a-b"]), spec(None, 5, Need::All, None));
    assert!(
        error.contains("items 0 and 1") && error.contains("`a-b`"),
        "{error}"
    );
    // Under `all`, an empty list is an empty group (done at once).
    assert!(
        instances("lens", &spec(None, 5, Need::All, None), &json!([]))
            .unwrap()
            .is_empty()
    );
    // A pointer reaches into an artifact.
    let made = instances(
        "lens",
        &spec(None, 5, Need::All, Some("/plan/items")),
        &json!({"plan": {"items": ["x"]}}),
    )
    .unwrap();
    assert_eq!(made[0].id, "lens[x]");
}
