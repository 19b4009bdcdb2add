//! Spec fields the providers of the built-in `image` and `cluster` kinds
//! share (`local`, `docker`, `ec2`): one rule each, so a cluster's `size`
//! or `env` means the same and is refused the same way whichever provider
//! runs it. Errors name the field (`spec.size: ...`).

use serde_json::Value;

use super::Object;

/// The most machines a cluster may have.
pub const MAX_MACHINES: u64 = 64;

/// Environment variables opsd sets for every machine; `spec.env` may not.
pub const MACHINE_VARS: [&str; 4] = ["PORT", "OPSD_HOST", "OPSD_CLUSTER", "OPSD_MACHINE"];

/// `spec.image`: the name of the built image a cluster runs.
pub fn image(spec: &Object) -> Result<String, String> {
    match spec.get("image") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err("spec.image: required: the name of a built image".into()),
        Some(v) => Err(format!("spec.image: must be the name of an image, not {v}")),
    }
}

/// `spec.size`: the number of machines, 1 to [`MAX_MACHINES`].
pub fn size(spec: &Object) -> Result<u64, String> {
    match spec.get("size") {
        None | Some(Value::Null) => Err(format!(
            "spec.size: required: the number of machines, 1 to {MAX_MACHINES}"
        )),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=MAX_MACHINES).contains(n))
            .ok_or_else(|| format!("spec.size: must be an integer from 1 to {MAX_MACHINES}, not {v}")),
    }
}

/// `spec.port`: the port a machine listens on, `default` without one.
pub fn port(spec: &Object, default: u16) -> Result<u16, String> {
    match spec.get("port") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|p| *p >= 1)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("spec.port: must be a port, 1 to 65535, not {v}")),
    }
}

/// `spec.env`: extra environment variables for every machine, a table of
/// strings; opsd's own ([`MACHINE_VARS`]) cannot be given.
pub fn env(spec: &Object) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    match spec.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (k, v) in vars {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(format!("spec.env: {k:?} is not a valid environment variable name"));
                }
                if MACHINE_VARS.contains(&k.as_str()) {
                    return Err(format!(
                        "spec.env.{k}: set by opsd for each machine; it cannot be given"
                    ));
                }
                match v {
                    Value::String(s) if !s.contains('\0') => env.push((k.clone(), s.clone())),
                    _ => return Err(format!("spec.env.{k}: must be a string")),
                }
            }
        }
        Some(_) => return Err("spec.env: must be a table of strings".into()),
    }
    Ok(env)
}

/// `spec.build`: absent, one shell command, or an array of them.
pub fn build_commands(spec: &Object) -> Result<Vec<String>, String> {
    match spec.get("build") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("spec.build[{i}]: must be a string (a shell command)"))
            })
            .collect(),
        Some(_) => Err("spec.build: must be a string or an array of strings (shell commands)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Object {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn each_field_names_itself_when_refused() {
        assert_eq!(size(&spec(json!({"size": 3}))), Ok(3));
        assert!(size(&spec(json!({}))).unwrap_err().starts_with("spec.size: required"));
        assert!(size(&spec(json!({"size": 65})))
            .unwrap_err()
            .starts_with("spec.size: must be"));
        assert_eq!(port(&spec(json!({})), 8080), Ok(8080));
        assert_eq!(port(&spec(json!({"port": 80})), 8080), Ok(80));
        for bad in [json!(0), json!(65536), json!("80")] {
            assert!(port(&spec(json!({ "port": bad })), 8080)
                .unwrap_err()
                .starts_with("spec.port: "));
        }
        assert_eq!(image(&spec(json!({"image": "web"}))), Ok("web".into()));
        assert!(image(&spec(json!({"image": ""})))
            .unwrap_err()
            .starts_with("spec.image: "));
        assert_eq!(
            env(&spec(json!({"env": {"A": "1"}}))),
            Ok(vec![("A".into(), "1".into())])
        );
        assert!(env(&spec(json!({"env": {"PORT": "1"}})))
            .unwrap_err()
            .starts_with("spec.env.PORT: "));
        assert_eq!(
            build_commands(&spec(json!({"build": "make"}))),
            Ok(vec!["make".to_string()])
        );
        assert!(build_commands(&spec(json!({"build": [1]})))
            .unwrap_err()
            .starts_with("spec.build[0]: "));
    }
}
