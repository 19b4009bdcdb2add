//! What the user types to name and describe resources: `KIND/NAME`,
//! `KEY=VALUE` pairs (`--label`, `--arg`), a resource's spec from a JSON or
//! TOML file, and `--set` edits on top of it. Pure parsing, so every rule is
//! unit-tested here; clap calls the `parse` functions, which turns their
//! errors into usage errors naming the argument.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::time::Duration;

use opsd_proto::json::{json_type, typed_value};
use serde_json::{Map, Value};

/// A resource named on the command line as `KIND/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    /// The kind, e.g. `app`.
    pub kind: String,
    /// The name, unique within the kind.
    pub name: String,
}

impl ResourceRef {
    /// Parses `KIND/NAME`: exactly one `/`, with text on both sides. Used as
    /// clap's value parser.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(name), None) if !kind.is_empty() && !name.is_empty() => Ok(Self {
                kind: kind.to_string(),
                name: name.to_string(),
            }),
            _ => Err(format!(
                "expected KIND/NAME with exactly one '/', like app/web, not {text:?}"
            )),
        }
    }
}

impl ResourceRef {
    /// `create`'s resource: `KIND/NAME` in one word, or `KIND NAME` in two.
    pub fn from_words(first: &str, second: Option<&str>) -> Result<Self, String> {
        match second {
            None if first.contains('/') => Self::parse(first),
            None => Err(format!(
                "{first:?} names no resource: give KIND/NAME, like {first}/web (or KIND NAME, two words)"
            )),
            Some(name) if !first.is_empty() && !first.contains('/') && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    kind: first.to_string(),
                    name: name.to_string(),
                })
            }
            Some(name) => Err(format!(
                "expected KIND/NAME, or KIND NAME as two words without '/', like app/web or app web, not {first:?} {name:?}"
            )),
        }
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// One `KEY=VALUE` argument (`--label`, `--arg`): split at the first `=`, the
/// key non-empty, the value anything (even empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The text before the first `=`.
    pub key: String,
    /// The text after it.
    pub value: String,
}

impl KeyValue {
    /// Parses `KEY=VALUE`. Used as clap's value parser.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(Self {
                key: key.to_string(),
                value: value.to_string(),
            }),
            Some(_) => Err(format!("the key before '=' is empty in {text:?} (expected KEY=VALUE)")),
            None => Err(format!("no '=' in {text:?} (expected KEY=VALUE)")),
        }
    }
}

/// Collects `KEY=VALUE` arguments into a map; `flag` (e.g. `--label`) names
/// them in the error if a key is given twice.
pub fn key_values(pairs: Vec<KeyValue>, flag: &str) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::with_capacity(pairs.len());
    for pair in pairs {
        if map.contains_key(&pair.key) {
            return Err(format!("{flag} {} is given twice", pair.key));
        }
        map.insert(pair.key, pair.value);
    }
    Ok(map)
}

/// One `--set KEY=VALUE`: a dotted path into the spec and the value to put there.
#[derive(Debug, Clone, PartialEq)]
pub struct SetArg {
    /// The argument as given, for messages.
    text: String,
    /// The path: `a.b.c` is `["a", "b", "c"]`.
    path: Vec<String>,
    /// The value: JSON if the text is valid JSON (numbers, true/false, null,
    /// arrays, objects, quoted strings), else the text as a string.
    value: Value,
}

impl SetArg {
    /// Parses `KEY=VALUE` with a dotted KEY. Used as clap's value parser.
    pub fn parse(text: &str) -> Result<Self, String> {
        let pair = KeyValue::parse(text)?;
        let path: Vec<String> = pair.key.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "the key {:?} has an empty part (expected KEY or KEY.SUBKEY..., like a.b=1)",
                pair.key
            ));
        }
        let value = typed_value(&pair.value);
        Ok(Self {
            text: text.to_string(),
            path,
            value,
        })
    }

    /// Puts the value at the path in `spec`, creating the objects on the way
    /// and replacing what was at the path. Fails, naming the argument, if a
    /// part of the path on the way holds something other than an object.
    pub fn apply(&self, spec: &mut Map<String, Value>) -> Result<(), String> {
        let (last, parents) = self
            .path
            .split_last()
            .ok_or_else(|| format!("--set {}: empty key", self.text))?;
        let mut object = spec;
        for (depth, part) in parents.iter().enumerate() {
            let slot = object.entry(part.clone()).or_insert_with(|| Value::Object(Map::new()));
            object = match slot {
                Value::Object(inner) => inner,
                other => {
                    return Err(format!(
                        "--set {}: {} is {}, not an object, so it has no key {:?}",
                        self.text,
                        self.path[..=depth].join("."),
                        json_type(other),
                        self.path[depth + 1]
                    ))
                }
            };
        }
        object.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

/// Parses a spec file's text: JSON if it parses as JSON, else TOML; either way
/// it must be an object (a TOML file always is; an empty file is `{}`). The
/// error says why it is neither, showing the JSON parser's complaint for text
/// that looks like JSON (starts with `{` or `[`) and TOML's otherwise.
/// `file` names the file in errors.
pub fn parse_spec(text: &str, file: &str) -> Result<Map<String, Value>, String> {
    let json_error = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => return Ok(object),
        Ok(other) => {
            return Err(format!(
                "spec file {file}: the spec must be an object, but the JSON is {}",
                json_type(&other)
            ))
        }
        Err(e) => e,
    };
    match text.parse::<toml::Table>() {
        Ok(table) => toml_table_to_json(table, "").map_err(|e| format!("spec file {file}: {e}")),
        Err(toml_error) => {
            let looks_like_json = matches!(text.trim_start().chars().next(), Some('{' | '['));
            if looks_like_json {
                Err(format!("spec file {file}: invalid JSON: {json_error}"))
            } else {
                Err(format!(
                    "spec file {file}: neither JSON nor TOML; as TOML: {}",
                    toml_error.to_string().trim_end()
                ))
            }
        }
    }
}

/// A TOML table as a JSON object; `prefix` is the dotted path of the table,
/// for errors.
fn toml_table_to_json(table: toml::Table, prefix: &str) -> Result<Map<String, Value>, String> {
    let mut object = Map::with_capacity(table.len());
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let value = toml_to_json(value, &path)?;
        object.insert(key, value);
    }
    Ok(object)
}

/// A TOML value as JSON: date-times become their TOML text (RFC 3339 for
/// full date-times); a float JSON cannot hold (nan, inf) is an error naming
/// the key.
fn toml_to_json(value: toml::Value, path: &str) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("{path} = {f} cannot be written in JSON"))?,
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| toml_to_json(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Value::Object(toml_table_to_json(table, path)?),
    })
}

/// Builds a spec: the file's object (if any) with every `--set` applied in
/// order.
pub fn build_spec(file: Option<Map<String, Value>>, sets: &[SetArg]) -> Result<Map<String, Value>, String> {
    let mut spec = file.unwrap_or_default();
    for set in sets {
        set.apply(&mut spec)?;
    }
    Ok(spec)
}

/// The text of a file named on the command line, or of standard input for `-`.
pub fn read_file_or_stdin(path: &str) -> io::Result<String> {
    if path == "-" {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
    }
}

/// Parses a `--since` duration like `10m`, `2h` or `7d` (anything
/// `humantime` reads, e.g. `1h 30m`). Zero is refused: the API reads 0 as
/// "any age". Used as clap's value parser, which names the flag in errors.
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e} (expected a duration like 10m, 2h or 7d)"))?;
    if duration.is_zero() {
        return Err("the duration must be more than 0 (leave the flag out for any age)".to_string());
    }
    Ok(duration)
}

/// A duration in whole milliseconds, as the API takes it (at least 1, at most
/// u64::MAX).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_with(sets: &[&str]) -> Result<Value, String> {
        let sets: Vec<SetArg> = sets.iter().map(|s| SetArg::parse(s)).collect::<Result<_, _>>()?;
        build_spec(None, &sets).map(Value::Object)
    }

    #[test]
    fn resource_ref_needs_exactly_one_slash() {
        assert_eq!(
            ResourceRef::parse("app/web"),
            Ok(ResourceRef {
                kind: "app".into(),
                name: "web".into()
            })
        );
        assert_eq!(ResourceRef::parse("app/web").unwrap().to_string(), "app/web");
        for bad in ["app", "app/web/x", "/web", "app/", "/", ""] {
            let error = ResourceRef::parse(bad).unwrap_err();
            assert!(error.contains("KIND/NAME"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn create_takes_kind_slash_name_or_two_words() {
        let web = ResourceRef {
            kind: "app".into(),
            name: "web".into(),
        };
        assert_eq!(ResourceRef::from_words("app/web", None), Ok(web.clone()));
        assert_eq!(ResourceRef::from_words("app", Some("web")), Ok(web));
        let e = ResourceRef::from_words("app", None).unwrap_err();
        assert!(e.contains("give KIND/NAME, like app/web"), "{e}");
        for (first, second) in [("app/web", "x"), ("app", "a/b"), ("", "web"), ("app", "")] {
            let e = ResourceRef::from_words(first, Some(second)).unwrap_err();
            assert!(e.contains("KIND/NAME, or KIND NAME"), "{first:?} {second:?}: {e}");
        }
        assert!(ResourceRef::from_words("app/web/x", None).is_err());
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        let pair = KeyValue::parse("url=http://x/?a=b").unwrap();
        assert_eq!((pair.key.as_str(), pair.value.as_str()), ("url", "http://x/?a=b"));
        assert_eq!(KeyValue::parse("empty=").unwrap().value, "");
        assert!(KeyValue::parse("novalue").unwrap_err().contains("no '='"));
        assert!(KeyValue::parse("=x").unwrap_err().contains("empty"));
    }

    #[test]
    fn key_values_refuse_a_key_given_twice() {
        let pairs = vec![KeyValue::parse("a=1").unwrap(), KeyValue::parse("b=2").unwrap()];
        let map = key_values(pairs, "--label").unwrap();
        assert_eq!(map.get("a").map(String::as_str), Some("1"));
        let twice = vec![KeyValue::parse("a=1").unwrap(), KeyValue::parse("a=2").unwrap()];
        assert_eq!(key_values(twice, "--arg").unwrap_err(), "--arg a is given twice");
    }

    #[test]
    fn set_values_are_json_when_they_parse_as_json_else_strings() {
        let spec = spec_with(&[
            "n=2",
            "f=1.5",
            "t=true",
            "nothing=null",
            "list=[1,\"x\"]",
            "obj={\"k\":1}",
            "quoted=\"2\"",
            "word=hello",
            "empty=",
            "spaced=hello world",
        ])
        .unwrap();
        assert_eq!(
            spec,
            json!({
                "n": 2, "f": 1.5, "t": true, "nothing": null, "list": [1, "x"],
                "obj": {"k": 1}, "quoted": "2", "word": "hello", "empty": "", "spaced": "hello world",
            })
        );
    }

    #[test]
    fn dotted_set_keys_make_nested_objects() {
        let spec = spec_with(&["a.b=1", "a.c.d=x", "e=3"]).unwrap();
        assert_eq!(spec, json!({"a": {"b": 1, "c": {"d": "x"}}, "e": 3}));
    }

    #[test]
    fn set_applies_on_top_of_the_file_and_later_sets_win() {
        let file = parse_spec(r#"{"replicas": 1, "image": {"tag": "v1", "repo": "r"}}"#, "spec.json").unwrap();
        let sets = vec![
            SetArg::parse("replicas=2").unwrap(),
            SetArg::parse("image.tag=v2").unwrap(),
            SetArg::parse("replicas=3").unwrap(),
        ];
        let spec = build_spec(Some(file), &sets).unwrap();
        assert_eq!(
            Value::Object(spec),
            json!({"replicas": 3, "image": {"tag": "v2", "repo": "r"}})
        );
    }

    #[test]
    fn set_through_a_non_object_names_the_argument() {
        let error = spec_with(&["a=1", "a.b.c=2"]).unwrap_err();
        assert_eq!(
            error,
            "--set a.b.c=2: a is a number, not an object, so it has no key \"b\""
        );
    }

    #[test]
    fn set_refuses_empty_key_parts() {
        for bad in ["a..b=1", ".a=1", "a.=1"] {
            assert!(SetArg::parse(bad).unwrap_err().contains("empty part"), "{bad}");
        }
        assert!(SetArg::parse("a").unwrap_err().contains("no '='"));
    }

    #[test]
    fn spec_files_may_be_json_or_toml() {
        let from_json = parse_spec(r#"{"replicas": 2, "ports": [80, 443]}"#, "a.json").unwrap();
        let from_toml = parse_spec("replicas = 2\nports = [80, 443]\n", "a.toml").unwrap();
        assert_eq!(from_json, from_toml);
        let nested = parse_spec(
            "[image]\ntag = \"v1\"\nbuilt = 1979-05-27T07:32:00Z\n[[disk]]\nsize = 1.5\n",
            "b.toml",
        )
        .unwrap();
        assert_eq!(
            Value::Object(nested),
            json!({"image": {"tag": "v1", "built": "1979-05-27T07:32:00Z"}, "disk": [{"size": 1.5}]})
        );
        assert_eq!(parse_spec("", "empty.toml").unwrap(), Map::new());
    }

    #[test]
    fn spec_file_errors_name_the_file() {
        let not_object = parse_spec("[1, 2]", "list.json").unwrap_err();
        assert_eq!(
            not_object,
            "spec file list.json: the spec must be an object, but the JSON is an array"
        );
        let bad_json = parse_spec("{\"a\": }", "bad.json").unwrap_err();
        assert!(bad_json.starts_with("spec file bad.json: invalid JSON:"), "{bad_json}");
        let bad_toml = parse_spec("a = = 1", "bad.toml").unwrap_err();
        assert!(
            bad_toml.starts_with("spec file bad.toml: neither JSON nor TOML; as TOML:"),
            "{bad_toml}"
        );
        let nan = parse_spec("[x]\ny = nan\n", "nan.toml").unwrap_err();
        assert_eq!(nan, "spec file nan.toml: x.y = NaN cannot be written in JSON");
    }

    #[test]
    fn since_takes_human_durations_but_not_zero() {
        assert_eq!(parse_since("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_since("0s").unwrap_err().contains("more than 0"));
        assert!(parse_since("soon").unwrap_err().contains("like 10m"));
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::from_micros(10)), 1);
    }
}
