//! The docker provider's image steps: an image is a Docker image built by
//! the engine from a directory holding a `Dockerfile` (no registry is
//! needed: `FROM scratch` plus files copied from the directory is enough).
//! It lives on the engine that built it (`outputs.engine`, the engine's own
//! ID), tagged `opsd-SCOPE-NAME:RUN` and labelled with the opsd cluster, the
//! resource and the run that built it.

use std::path::PathBuf;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::engine::{context_of_dir, LABEL_CLUSTER, LABEL_RESOURCE, LABEL_RUN};
use super::{connect, docker_name_part, or_cancelled, DockerProvider, StepOut};
use crate::ops::files::blocking;
use crate::ops::{LogSink, Object, StepError, StepRequest};

/// An image's spec, checked.
pub(super) struct ImageSpec {
    /// The directory to build from.
    source: String,
    /// `start`, as given (a string, an array of strings, or null).
    start: Value,
}

/// Checks an image's spec, naming the field at fault.
pub(super) fn image_spec(spec: &Object) -> Result<ImageSpec, String> {
    let source = match spec.get("source") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => {
            return Err("spec.source: required: the directory to build from (it holds a Dockerfile)".into())
        }
        Some(_) => return Err("spec.source: must be a string (a directory holding a Dockerfile)".into()),
    };
    if spec.get("build").is_some_and(|v| !v.is_null()) {
        return Err(
            "spec.build: not supported by the docker provider: build steps go in the Dockerfile (RUN lines)".into(),
        );
    }
    let start = match spec.get("start") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if !s.trim().is_empty() => Value::String(s.clone()),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            Value::Array(items.clone())
        }
        Some(_) => return Err(
            "spec.start: must be a shell command (run by /bin/sh in the container) or an array of strings (run as is)"
                .into(),
        ),
    };
    Ok(ImageSpec { source, start })
}

/// The command a container of an image runs, from the image's `start`
/// output: a string runs under `/bin/sh -c`, an array as is, none keeps the
/// image's own `CMD`.
pub(super) fn start_command(start: &Value) -> Option<Vec<String>> {
    match start {
        Value::String(s) => Some(vec!["/bin/sh".into(), "-c".into(), s.clone()]),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect()),
        _ => None,
    }
}

impl DockerProvider {
    /// `copy_source`: checks the spec and the source directory (it must
    /// hold a `Dockerfile`) and that the engine answers; records both.
    pub(super) async fn copy_source(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let spec = image_spec(&req.spec)?;
        let src = std::fs::canonicalize(&spec.source).map_err(|e| format!("spec.source: {}: {e}", spec.source))?;
        if !src.is_dir() {
            return Err(format!("spec.source: {} is not a directory", spec.source).into());
        }
        if !src.join("Dockerfile").is_file() {
            return Err(format!(
                "spec.source: {} has no Dockerfile (the docker provider builds the image it describes)",
                spec.source
            )
            .into());
        }
        let engine = connect(cancel).await?;
        log.line(format!(
            "source {} has a Dockerfile; the image will be built by the Docker engine {} at {}",
            src.display(),
            engine.id(),
            engine.host()
        ));
        let mut out = Object::new();
        out.insert("source".into(), json!(src.display().to_string()));
        out.insert("engine".into(), json!(engine.id()));
        Ok(out)
    }

    /// `build_image`: builds the source into an image tagged for this run,
    /// then removes this resource's earlier images that no container uses.
    pub(super) async fn build_image(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let spec = image_spec(&req.spec)?;
        let source = match req.outputs.get("source") {
            Some(Value::String(s)) => PathBuf::from(s),
            _ => PathBuf::from(&spec.source),
        };
        let context = {
            let source = source.clone();
            blocking(move || context_of_dir(&source))
                .await
                .map_err(|e| format!("spec.source: {e}"))?
        };
        let engine = connect(cancel).await?;
        let tag = format!("{}:{}", self.engine_name(&req.name, ""), docker_name_part(&req.run_id));
        let labels = self.labels(&req.kind, &req.name, &req.run_id);
        log.line(format!(
            "building {tag} from {} ({} bytes of context) on the Docker engine {}",
            source.display(),
            context.len(),
            engine.id()
        ));
        let id = engine.build_image(&tag, context, &labels, log, cancel).await?;
        log.line(format!("built {tag}: {id}"));

        // Earlier builds of this image are replaced by this one; one that a
        // container still runs stays (image destroy removes it).
        let resource = format!("{}/{}", req.kind, req.name);
        let mine = [
            (LABEL_CLUSTER, self.scope.as_str()),
            (LABEL_RESOURCE, resource.as_str()),
        ];
        for old in or_cancelled(cancel, engine.images(&mine)).await? {
            if old.id == id || old.labels.get(LABEL_RUN).map(String::as_str) == Some(req.run_id.as_str()) {
                continue;
            }
            match or_cancelled(cancel, engine.remove_unused_image(&old.id)).await? {
                true => log.line(format!("removed the earlier build {} {}", old.id, old.tags.join(" "))),
                false => log.line(format!(
                    "kept the earlier build {}: a container uses it (image destroy removes it)",
                    old.id
                )),
            }
        }
        let mut out = Object::new();
        out.insert("tag".into(), json!(tag));
        out.insert("image_id".into(), json!(id));
        out.insert("engine".into(), json!(engine.id()));
        out.insert("start".into(), spec.start);
        out.insert("source".into(), json!(source.display().to_string()));
        Ok(out)
    }

    /// `remove_image`: removes every image of this resource on the engine.
    /// One a running container uses cannot be removed: the step fails
    /// saying so (destroy the clusters running it first).
    pub(super) async fn remove_image(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let engine = connect(cancel).await?;
        let resource = format!("{}/{}", req.kind, req.name);
        let mine = [
            (LABEL_CLUSTER, self.scope.as_str()),
            (LABEL_RESOURCE, resource.as_str()),
        ];
        for image in or_cancelled(cancel, engine.images(&mine)).await? {
            or_cancelled(cancel, engine.remove_image(&image.id))
                .await
                .map_err(|e| match e {
                    StepError::Failed(e) => StepError::Failed(format!(
                        "{e} (image {} is still used: destroy the clusters running it first)",
                        req.name
                    )),
                    cancelled => cancelled,
                })?;
            log.line(format!("removed {} {}", image.id, image.tags.join(" ")));
        }
        let mut out = Object::new();
        out.insert("tag".into(), Value::Null);
        out.insert("image_id".into(), Value::Null);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_a_shell_command_an_argv_or_the_images_own() {
        assert_eq!(
            start_command(&json!("exec app --port $PORT")),
            Some(vec!["/bin/sh".into(), "-c".into(), "exec app --port $PORT".into()])
        );
        assert_eq!(
            start_command(&json!(["/app", "--flag"])),
            Some(vec!["/app".into(), "--flag".into()])
        );
        assert_eq!(start_command(&Value::Null), None);
        let spec = |v: Value| v.as_object().cloned().unwrap();
        for bad in [
            json!({"source": "s", "start": 1}),
            json!({"source": "s", "start": []}),
            json!({"source": "s", "start": [1]}),
        ] {
            let e = image_spec(&spec(bad.clone())).err().unwrap_or_default();
            assert!(e.starts_with("spec.start: "), "{bad}: {e}");
        }
    }
}
