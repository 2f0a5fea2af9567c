//! The one rule every stored text obeys: no U+0000.
//!
//! PostgreSQL's `text` and `jsonb` cannot hold the NUL character while SQLite can, so a
//! NUL is refused as a [`FieldError`] at every edge, before anything is written, and
//! both backends answer the same. Pure functions only: no I/O, no other module.

use serde_json::Value;

use super::FieldError;

const NUL_MESSAGE: &str = "must not contain the character U+0000";

/// A [`FieldError`] on `field` when `text` contains U+0000.
///
/// # Errors
///
/// The field error, on `field`.
pub fn check_no_nul(field: &str, text: &str) -> Result<(), FieldError> {
    if text.contains('\0') {
        Err(FieldError::new(field, NUL_MESSAGE))
    } else {
        Ok(())
    }
}

/// A [`FieldError`] naming the first string or object key of `value` (depth first, in
/// document order) that contains U+0000, its path rooted at `field`: `metadata.foo`,
/// `attachments[2].url`. A key holding the NUL is named with it written `\u0000`.
///
/// # Errors
///
/// The field error, on that path.
pub fn check_json_no_nul(field: &str, value: &Value) -> Result<(), FieldError> {
    match first_nul_path(field, value) {
        Some(path) => Err(FieldError::new(path, NUL_MESSAGE)),
        None => Ok(()),
    }
}

/// The path of the first string or key of `value` containing U+0000, if any.
fn first_nul_path(path: &str, value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| first_nul_path(&format!("{path}[{i}]"), item)),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = format!("{path}.{}", key.replace('\0', "\\u0000"));
            if key.contains('\0') {
                Some(here)
            } else {
                first_nul_path(&here, item)
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_nul_in_text_is_refused_on_its_field() {
        assert_eq!(check_no_nul("text", "hello"), Ok(()));
        let err = check_no_nul("text", "he\0llo").unwrap_err();
        assert_eq!(err.field, "text");
        assert_eq!(err.message, "must not contain the character U+0000");
    }

    #[test]
    fn a_nul_in_json_is_named_by_its_path() {
        assert_eq!(
            check_json_no_nul("metadata", &json!({"a": [1, "x"]})),
            Ok(())
        );
        let path = |v: Value| check_json_no_nul("metadata", &v).unwrap_err().field;
        assert_eq!(path(json!({"foo": "a\0"})), "metadata.foo");
        assert_eq!(path(json!({"a": [1, {"b": "\0"}]})), "metadata.a[1].b");
        assert_eq!(path(json!({"k\0": 1})), "metadata.k\\u0000");
        assert_eq!(path(json!("\0")), "metadata");
        assert_eq!(
            check_json_no_nul("attachments", &json!([{}, {"url": "u\0"}]))
                .unwrap_err()
                .field,
            "attachments[1].url"
        );
    }

    /// One step from a container down to the NUL: a key of an object, or a position in
    /// an array (with NUL-free values before and after it).
    #[derive(Debug, Clone)]
    enum Step {
        Key(String, Vec<(String, Value)>),
        Index(Vec<Value>, Vec<Value>),
    }

    fn clean_text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,8}"
    }

    fn clean_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            clean_text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((clean_text(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (
                clean_text(),
                prop::collection::vec((clean_text(), clean_json()), 0..3)
            )
                .prop_map(|(k, siblings)| Step::Key(k, siblings)),
            (
                prop::collection::vec(clean_json(), 0..3),
                prop::collection::vec(clean_json(), 0..3)
            )
                .prop_map(|(before, after)| Step::Index(before, after)),
        ]
    }

    /// A text with one NUL in it.
    fn nul_text() -> impl Strategy<Value = String> {
        (clean_text(), clean_text()).prop_map(|(a, b)| format!("{a}\0{b}"))
    }

    /// Wraps `inner` in the steps (innermost last) and returns the value with the path
    /// from the root to `inner`.
    fn wrap(root: &str, steps: &[Step], inner: Value) -> (Value, String) {
        let mut path = root.to_owned();
        for step in steps {
            match step {
                Step::Key(k, _) => path = format!("{path}.{k}"),
                Step::Index(before, _) => path = format!("{path}[{}]", before.len()),
            }
        }
        let mut value = inner;
        for step in steps.iter().rev() {
            value = match step {
                Step::Key(k, siblings) => {
                    let mut map: serde_json::Map<String, Value> =
                        siblings.iter().filter(|(s, _)| s != k).cloned().collect();
                    map.insert(k.clone(), value);
                    Value::Object(map)
                }
                Step::Index(before, after) => {
                    let mut items = before.clone();
                    items.push(value);
                    items.extend(after.iter().cloned());
                    Value::Array(items)
                }
            };
        }
        (value, path)
    }

    proptest! {
        /// JSON without a NUL anywhere is accepted.
        #[test]
        fn json_without_nul_is_accepted(value in clean_json()) {
            prop_assert_eq!(check_json_no_nul("metadata", &value), Ok(()));
        }

        /// JSON with one NUL in a string is refused, naming the path to that string.
        #[test]
        fn a_nul_in_a_string_is_refused_with_its_path(
            steps in prop::collection::vec(step(), 0..4),
            text in nul_text(),
        ) {
            let (value, path) = wrap("metadata", &steps, Value::String(text));
            let err = check_json_no_nul("metadata", &value).unwrap_err();
            prop_assert_eq!(err.field, path);
        }

        /// JSON with one NUL in an object key is refused, naming that key.
        #[test]
        fn a_nul_in_a_key_is_refused_with_its_path(
            steps in prop::collection::vec(step(), 0..4),
            key in nul_text(),
            inner in clean_json(),
        ) {
            let (value, path) = wrap("config", &steps, json!({ key.clone(): inner }));
            let err = check_json_no_nul("config", &value).unwrap_err();
            prop_assert_eq!(err.field, format!("{path}.{}", key.replace('\0', "\\u0000")));
        }
    }
}
