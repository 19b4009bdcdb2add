//! JSON objects carried as `google.protobuf.Struct` (specs and outputs): the
//! conversions to and from `serde_json`, with the checks the API applies to
//! a Struct a client sent. A Struct's numbers are doubles; integral ones
//! within 2^53 come back as JSON integers, so `{"replicas": 2}` round-trips.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as ProtoValue};
use serde_json::{Map, Number, Value};

/// The largest integer a double holds exactly: integral numbers up to it are
/// shown as JSON integers.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A JSON object as a Struct (numbers become doubles).
pub fn to_struct(object: Map<String, Value>) -> Struct {
    Struct {
        fields: object.into_iter().map(|(k, v)| (k, to_proto_value(v))).collect(),
    }
}

/// JSON object text (as the daemon stores specs and outputs) as a Struct;
/// empty text is `{}`. `field` names the text in the error.
pub fn text_to_struct(field: &str, text: &str) -> Result<Struct, String> {
    if text.trim().is_empty() {
        return Ok(Struct::default());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(to_struct(object)),
        Ok(other) => Err(format!("{field}: must be a JSON object, not {}", json_type(&other))),
        Err(e) => Err(format!("{field}: not valid JSON: {e}")),
    }
}

/// A Struct a client sent as a JSON object, checked: a Value with no kind
/// set, or a number that is NaN or infinite, is refused naming `field` and
/// the path to it (`spec.image.tag`).
pub fn from_struct(field: &str, value: &Struct) -> Result<Map<String, Value>, String> {
    let mut object = Map::new();
    for (key, v) in &value.fields {
        object.insert(key.clone(), from_proto_value(&format!("{field}.{key}"), v)?);
    }
    Ok(object)
}

/// An optional Struct (as a proto3 message field is) as a JSON value for
/// display: absent is `{}`; a part that is not valid JSON (which a server
/// never sends) is shown as null rather than failing the whole output.
pub fn struct_value(value: Option<&Struct>) -> Value {
    let Some(value) = value else {
        return Value::Object(Map::new());
    };
    Value::Object(
        value
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), from_proto_value(k, v).unwrap_or(Value::Null)))
            .collect(),
    )
}

/// The one rule for a value typed as text (`opsctl create --set KEY=VALUE`,
/// `opsctl do --arg KEY=VALUE`): text that is valid JSON is that value (`2`,
/// `1.5`, `true`, `null`, `[1,2]`, `{"a":1}`, and `"2"`, the string 2); any
/// other text is a string as it is (`v2`, `git@example.com:web.git`, ``).
pub fn typed_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The JSON type of a value, for error messages: `an object`, `a number`...
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn to_proto_value(value: Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        // Every JSON number has a nearest double.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_proto_value).collect(),
        }),
        Value::Object(object) => Kind::StructValue(to_struct(object)),
    };
    ProtoValue { kind: Some(kind) }
}

fn from_proto_value(path: &str, value: &ProtoValue) -> Result<Value, String> {
    match &value.kind {
        None => Err(format!("{path}: a Value with no kind set (use null_value for null)")),
        Some(Kind::NullValue(_)) => Ok(Value::Null),
        Some(Kind::BoolValue(b)) => Ok(Value::Bool(*b)),
        Some(Kind::NumberValue(n)) => number(path, *n),
        Some(Kind::StringValue(s)) => Ok(Value::String(s.clone())),
        Some(Kind::ListValue(list)) => list
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| from_proto_value(&format!("{path}[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Some(Kind::StructValue(object)) => from_struct(path, object).map(Value::Object),
    }
}

/// A double as a JSON number: an integer when it is one exactly.
fn number(path: &str, n: f64) -> Result<Value, String> {
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        return Ok(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| format!("{path}: {n} is not a JSON number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_text_is_json_when_it_parses_else_a_string() {
        for (text, value) in [
            ("2", json!(2)),
            ("-1.5", json!(-1.5)),
            ("true", json!(true)),
            ("null", Value::Null),
            ("[1, \"x\"]", json!([1, "x"])),
            ("{\"k\": 1}", json!({"k": 1})),
            ("\"2\"", json!("2")),
            (" 7 ", json!(7)),
            ("v2", json!("v2")),
            ("git@example.com:web.git", json!("git@example.com:web.git")),
            ("[1,", json!("[1,")),
            ("True", json!("True")),
            ("", json!("")),
        ] {
            assert_eq!(typed_value(text), value, "{text:?}");
        }
    }

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("a test object"),
        }
    }

    #[test]
    fn json_round_trips_through_a_struct() {
        let spec = json!({"replicas": 2, "ratio": 0.5, "image": {"tag": "v2"}, "ports": [80, 443], "off": false, "none": null, "neg": -3});
        let back = from_struct("spec", &to_struct(object(spec.clone()))).unwrap();
        assert_eq!(Value::Object(back), spec);
    }

    #[test]
    fn stored_text_becomes_a_struct() {
        assert_eq!(text_to_struct("spec", "").unwrap(), Struct::default());
        let s = text_to_struct("spec", r#"{"a":1}"#).unwrap();
        assert_eq!(struct_value(Some(&s)), json!({"a": 1}));
        assert!(text_to_struct("spec", "[1]").unwrap_err().contains("not an array"));
        assert!(text_to_struct("spec", "{")
            .unwrap_err()
            .starts_with("spec: not valid JSON"));
    }

    #[test]
    fn a_bad_struct_is_refused_naming_the_path() {
        let mut s = to_struct(object(json!({"image": {"tag": "v2"}})));
        let inner = s.fields.get_mut("image").unwrap();
        if let Some(Kind::StructValue(inner)) = &mut inner.kind {
            inner.fields.insert("bad".into(), ProtoValue { kind: None });
        }
        let e = from_struct("spec", &s).unwrap_err();
        assert!(e.starts_with("spec.image.bad: a Value with no kind set"), "{e}");
        let nan = Struct {
            fields: [(
                "x".to_string(),
                ProtoValue {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert!(from_struct("spec", &nan).unwrap_err().starts_with("spec.x: NaN"));
        assert_eq!(struct_value(Some(&nan)), json!({"x": null}));
        assert_eq!(struct_value(None), json!({}));
    }
}
