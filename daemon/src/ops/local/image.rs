//! The `local` provider's image steps: an image is a copy of a source
//! directory, built in place by shell commands, under
//! `<root>/images/<name>/<run_id>`. It lives on the node that copied it
//! (`outputs.node`) and only that node can build or remove it.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{LocalProvider, StepOut};
use crate::ops::fields::build_commands;
use crate::ops::files::{blocking, check_component, copy_tree, remove_tree};
use crate::ops::process::{describe_status, give_tree_to_exec_user, run_logged, user_shell, Ended};
use crate::ops::{LogSink, Object, StepError, StepRequest};

/// Time a build command gets between SIGTERM and SIGKILL when its step is
/// cancelled.
pub const BUILD_GRACE: Duration = Duration::from_secs(5);

impl LocalProvider {
    /// The directory holding every build of image `name`.
    pub(super) fn image_root(&self, name: &str) -> PathBuf {
        self.root.join("images").join(name)
    }

    /// `copy_source`: a fresh copy of the source, keyed by run id.
    pub(super) async fn copy_source(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        check_component("resource name", &req.name)?;
        check_component("run id", &req.run_id)?;
        let source = match req.spec.get("source") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) => return Err("spec.source: required: the directory to build from".into()),
            Some(_) => return Err("spec.source: must be a string (a directory path)".into()),
        };
        let src = fs::canonicalize(&source).map_err(|e| format!("spec.source: {source}: {e}"))?;
        if !src.is_dir() {
            return Err(format!("spec.source: {source} is not a directory").into());
        }
        let images = self.image_root(&req.name);
        fs::create_dir_all(&images).map_err(|e| format!("cannot create {}: {e}", images.display()))?;
        let images_real = fs::canonicalize(&images).map_err(|e| format!("cannot resolve {}: {e}", images.display()))?;
        if images_real.starts_with(&src) {
            return Err(format!(
                "spec.source: {source} contains the image directory {}; it cannot be copied into itself",
                images.display()
            )
            .into());
        }
        let dir = images.join(&req.run_id);
        let stats = {
            let (src, dir, cancel) = (src.clone(), dir.clone(), cancel.clone());
            blocking(move || {
                remove_tree(&dir)?;
                copy_tree(&src, &dir, &cancel)
            })
            .await?
        };
        log.line(format!(
            "copied {} files, {} directories and {} symlinks from {} to {}",
            stats.files,
            stats.dirs,
            stats.links,
            src.display(),
            dir.display()
        ));
        if stats.skipped > 0 {
            log.line(format!(
                "skipped {} special files (sockets, pipes, devices)",
                stats.skipped
            ));
        }
        // Earlier builds of this image are replaced by this one.
        let older: Vec<PathBuf> = fs::read_dir(&images)
            .map_err(|e| format!("cannot list {}: {e}", images.display()))?
            .flatten()
            .filter(|e| e.file_name() != req.run_id.as_str())
            .map(|e| e.path())
            .collect();
        for old in older {
            blocking({
                let old = old.clone();
                move || remove_tree(&old)
            })
            .await?;
            log.line(format!("removed the earlier build {}", old.display()));
        }
        let mut out = Object::new();
        out.insert("dir".into(), json!(dir.display().to_string()));
        out.insert("node".into(), json!(req.node_id));
        out.insert("source".into(), json!(src.display().to_string()));
        Ok(out)
    }

    /// `build_image`: the build commands, in order, in the image's copy.
    pub(super) async fn build_image(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let dir = owned_image_dir(req, "build")?.ok_or_else(|| {
            format!(
                "image {} has no outputs.dir: its source was not copied (the pending step did not succeed)",
                req.name
            )
        })?;
        let commands = build_commands(&req.spec)?;
        let start = match req.spec.get("start") {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(_) => return Err("spec.start: must be a string (the command a machine runs)".into()),
        };
        if !dir.is_dir() {
            return Err(format!(
                "image {}: its directory {} is missing; rebuild the image",
                req.name,
                dir.display()
            )
            .into());
        }
        // The build commands are the user's: the exec user's, in a clean
        // environment, in a copy that user owns.
        blocking({
            let dir = dir.clone();
            move || give_tree_to_exec_user(&dir)
        })
        .await?;
        for (i, command) in commands.iter().enumerate() {
            let n = i + 1;
            log.line(format!("$ {command}"));
            let mut cmd = user_shell(command, &dir);
            cmd.current_dir(&dir).env("OPSD_IMAGE", &req.name);
            let what = format!("build command {n} (`{command}`)");
            match run_logged(cmd, &what, None, log, cancel, BUILD_GRACE).await? {
                Ended::Cancelled => return Err(StepError::Cancelled.into()),
                Ended::Exited(status) if status.success() => {}
                Ended::Exited(status) => return Err(format!("{what} {}", describe_status(status)).into()),
            }
        }
        log.line(format!("ran {} build commands in {}", commands.len(), dir.display()));
        let mut out = Object::new();
        out.insert("start".into(), start);
        Ok(out)
    }

    /// `remove_image`: removes the image's files.
    pub(super) async fn remove_image(&self, req: &StepRequest, log: &LogSink) -> StepOut {
        check_component("resource name", &req.name)?;
        let images = self.image_root(&req.name);
        if let Some(dir) = owned_image_dir(req, "remove")? {
            if dir.starts_with(&images) {
                blocking({
                    let dir = dir.clone();
                    move || remove_tree(&dir)
                })
                .await?;
                log.line(format!("removed {}", dir.display()));
            } else {
                log.line(format!(
                    "not removing {}: it is not under {}",
                    dir.display(),
                    images.display()
                ));
            }
        }
        blocking({
            let images = images.clone();
            move || remove_tree(&images)
        })
        .await?;
        let mut out = Object::new();
        out.insert("dir".into(), Value::Null);
        Ok(out)
    }
}

/// The image's directory from its outputs, if it has one, after checking it
/// lives on this node (`verb` says what this node wanted to do with it).
fn owned_image_dir(req: &StepRequest, verb: &str) -> Result<Option<PathBuf>, String> {
    let dir = match req.outputs.get("dir") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => PathBuf::from(s),
        Some(_) => return Err("outputs.dir: must be a string".into()),
    };
    let node = req.outputs.get("node").and_then(Value::as_u64).ok_or_else(|| {
        format!(
            "image {}: outputs.node is missing, so the node holding {} is unknown",
            req.name,
            dir.display()
        )
    })?;
    if node != req.node_id {
        return Err(format!(
            "image {} lives on node {node}; only that node can {verb} it (this is node {})",
            req.name, req.node_id
        ));
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::{json, Value};

    use super::super::fixture::*;
    use crate::ops::Object;
    use std::fs;
    use std::path::PathBuf;

    #[tokio::test]
    async fn image_pending_then_building() {
        let f = fixture();
        let spec = json!({
            "source": f.source.display().to_string(),
            "build": ["echo building in $(basename $(pwd))", "echo built > built.txt && chmod 600 built.txt"],
            "start": "exec sleep 30",
        });
        let mut outputs = Object::new();
        ok(
            &f.provider,
            request("image", "web", "pending", spec.clone(), &outputs, "run-1"),
            &mut outputs,
        )
        .await;
        let dir = PathBuf::from(outputs["dir"].as_str().unwrap());
        assert_eq!(dir, f.root.join("images/web/run-1"));
        assert_eq!(outputs["node"], json!(1));
        assert_eq!(
            outputs["source"],
            json!(fs::canonicalize(&f.source).unwrap().display().to_string())
        );
        assert_eq!(
            fs::read_to_string(dir.join("index.html")).unwrap(),
            "hello from the image\n"
        );
        let mode = fs::metadata(dir.join("sub/run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(
            fs::read_link(dir.join("link.html")).unwrap(),
            PathBuf::from("index.html")
        );

        let lines = ok(
            &f.provider,
            request("image", "web", "building", spec.clone(), &outputs, "run-2"),
            &mut outputs,
        )
        .await;
        assert_eq!(fs::read_to_string(dir.join("built.txt")).unwrap(), "built\n");
        assert!(lines.contains(&"building in run-1".to_string()), "{lines:?}");
        assert_eq!(outputs["start"], json!("exec sleep 30"));
        assert!(!f.source.join("built.txt").exists(), "the build changed the source");

        // A rebuild starts from a fresh copy and replaces the earlier one.
        fs::write(dir.join("leftover"), "x").unwrap();
        ok(
            &f.provider,
            request("image", "web", "pending", spec.clone(), &outputs, "run-3"),
            &mut outputs,
        )
        .await;
        let dir3 = PathBuf::from(outputs["dir"].as_str().unwrap());
        assert!(!dir3.join("leftover").exists() && !dir3.join("built.txt").exists());
        assert!(!dir.exists(), "the earlier build was kept");

        // Pending again for the same run (a takeover) starts over too.
        fs::write(dir3.join("leftover"), "x").unwrap();
        ok(
            &f.provider,
            request("image", "web", "pending", spec.clone(), &outputs, "run-3"),
            &mut outputs,
        )
        .await;
        assert!(!dir3.join("leftover").exists());

        ok(
            &f.provider,
            request("image", "web", "destroying", spec.clone(), &outputs, "run-4"),
            &mut outputs,
        )
        .await;
        assert_eq!(outputs["dir"], Value::Null);
        assert!(!f.root.join("images/web").exists());
        // Destroying again is fine.
        ok(
            &f.provider,
            request("image", "web", "destroying", spec, &outputs, "run-5"),
            &mut outputs,
        )
        .await;
    }

    #[tokio::test]
    async fn image_failures_name_their_cause() {
        let f = fixture();
        let missing = f.source.join("nope");
        let spec = json!({ "source": missing.display().to_string() });
        let (r, _) = step(
            &f.provider,
            request("image", "a", "pending", spec, &Object::new(), "r1"),
        )
        .await;
        let e = error_of(r);
        assert!(
            e.starts_with("spec.source: ") && e.contains(&missing.display().to_string()),
            "{e}"
        );

        let spec = json!({ "source": f.source.display().to_string(), "build": ["true", "echo no >&2; exit 4"] });
        let mut outputs = Object::new();
        ok(
            &f.provider,
            request("image", "a", "pending", spec.clone(), &outputs, "r2"),
            &mut outputs,
        )
        .await;
        let (r, lines) = step(
            &f.provider,
            request("image", "a", "building", spec.clone(), &outputs, "r3"),
        )
        .await;
        assert_eq!(
            error_of(r),
            "build command 2 (`echo no >&2; exit 4`) exited with status 4"
        );
        assert!(lines.contains(&"no".to_string()), "{lines:?}");

        let mut elsewhere = request("image", "a", "building", spec.clone(), &outputs, "r3");
        elsewhere.node_id = 2;
        let (r, _) = step(&f.provider, elsewhere).await;
        assert_eq!(
            error_of(r),
            "image a lives on node 1; only that node can build it (this is node 2)"
        );
        let mut elsewhere = request("image", "a", "destroying", spec.clone(), &outputs, "r4");
        elsewhere.node_id = 2;
        let (r, _) = step(&f.provider, elsewhere).await;
        assert!(error_of(r).contains("only that node can remove it"));
    }
}
