//! JSON merge patch (RFC 7386): the difference between two parsed documents, and its application.

use serde_json::{Map, Value};

/// The merge patch that turns `a` into `b`, or `None` when they are equal.
///
/// A patch cannot say "set this to null" (null means "remove"), nor keep an array's unchanged
/// items: [`apply`] tells whether a patch reproduces `b`, and the caller falls back to the full
/// document when it does not.
pub(crate) fn diff(a: &Value, b: &Value) -> Option<Value> {
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            let mut patch = Map::new();
            for (k, vb) in mb {
                match ma.get(k) {
                    Some(va) => {
                        if let Some(d) = diff(va, vb) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), vb.clone());
                    }
                }
            }
            for k in ma.keys() {
                if !mb.contains_key(k) {
                    patch.insert(k.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ => (a != b).then(|| b.clone()),
    }
}

/// RFC 7386's MergePatch(target, patch).
pub(crate) fn apply(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else { return patch.clone() };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = apply(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_carries_only_what_changed_and_applies_back() {
        let a = json!({"s": {"m": {"ra": {"val": 1.5, "timestamp": 1}, "dec": {"val": 2, "timestamp": 1}}}, "t": 1});
        let b = json!({"s": {"m": {"ra": {"val": 1.6, "timestamp": 2}, "dec": {"val": 2, "timestamp": 1}}}, "t": 2});
        let p = diff(&a, &b).expect("a difference");
        assert_eq!(p, json!({"s": {"m": {"ra": {"val": 1.6, "timestamp": 2}}}, "t": 2}));
        assert_eq!(apply(&a, &p), b);
        assert_eq!(diff(&a, &a), None);
    }

    #[test]
    fn a_change_to_null_cannot_be_said() {
        let a = json!({"x": {"val": 1}});
        let b = json!({"x": {"val": null}});
        let p = diff(&a, &b).expect("a difference");
        assert_ne!(apply(&a, &p), b);
    }
}
