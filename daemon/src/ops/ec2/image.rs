//! The EC2 provider's image steps: an image is an AMI made from a builder
//! instance. `copy_source` starts the builder from the base AMI (`source`)
//! with the build commands as its boot script; `build_image` waits for the
//! build (the builder powers itself off when its commands succeed; without
//! build commands opsd stops it), makes the AMI (`CreateImage`, named from
//! the scope, the image and the builder, so a takeover finds it by name),
//! waits until it is available and terminates the builder; `remove_image`
//! deregisters every AMI of the image and deletes their snapshots.

use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::instances::{self, owner_tags, Launch, LIVE, STATE_TIMEOUT};
use super::sdk::{pause, Ec2};
use super::spec::{ami_name, builder_user_data, client_token, image_spec, TAG_CLUSTER, TAG_RESOURCE};
use super::{Ec2Provider, StepOut};
use crate::ops::{LogSink, Object, StepError, StepRequest};

/// How long a new AMI may take to become available.
const AMI_TIMEOUT: Duration = Duration::from_secs(3600);

/// The role tag of a builder instance.
const BUILDER: &str = "builder";

/// One AMI of an image, as EC2 describes it.
struct Ami {
    id: String,
    state: String,
    snapshots: Vec<String>,
}

fn ami_filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

impl Ec2Provider {
    /// `copy_source`: the builder instance of this run, started from the
    /// base AMI unless an earlier attempt started it; builders of earlier
    /// builds are terminated.
    pub(super) async fn start_builder(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let spec = image_spec(&req.spec)?;
        let ec2 = self.ec2().await?;
        let resource = format!("image/{}", req.name);
        let existing = instances::list(&ec2, &self.scope, &resource, &LIVE, cancel).await?;
        let (mine, older): (Vec<_>, Vec<_>) = existing
            .into_iter()
            .filter(|f| f.role == BUILDER)
            .partition(|f| f.run == req.run_id);
        let older: Vec<String> = older.into_iter().map(|f| f.id).collect();
        if !older.is_empty() {
            log.line(format!("builders of earlier builds: {}", older.join(", ")));
            instances::terminate(&ec2, &older, log, cancel).await?;
        }
        let builder = match mine.first() {
            Some(f) => {
                log.line(format!("builder {} of this run is already {}", f.id, f.state));
                f.id.clone()
            }
            None => {
                let launch = Launch {
                    ami: &spec.base_ami,
                    instance_type: &spec.instance_type,
                    token: client_token(&self.scope, &resource, &req.run_id, BUILDER),
                    tags: instances::tags(&self.scope, &resource, &req.run_id, BUILDER, None),
                    user_data: builder_user_data(&spec.build),
                    key_name: None,
                    security_group: None,
                    subnet_id: None,
                    stop_on_shutdown: true,
                };
                let id = instances::launch(&ec2, launch, cancel).await?;
                log.line(format!(
                    "started builder {id} from {} ({}, {} build commands)",
                    spec.base_ami,
                    spec.instance_type,
                    spec.build.len()
                ));
                id
            }
        };
        let mut out = Object::new();
        out.insert("builder".into(), json!(builder));
        out.insert("base_ami".into(), json!(spec.base_ami));
        out.insert("region".into(), json!(ec2.region));
        Ok(out)
    }

    /// `build_image`: waits for the build, makes the AMI (or finds the one
    /// an earlier attempt made), waits until it is available, terminates
    /// the builder and deregisters the image's earlier AMIs.
    pub(super) async fn make_ami(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let spec = image_spec(&req.spec)?;
        let ec2 = self.ec2().await?;
        let resource = format!("image/{}", req.name);
        let builder = match req.outputs.get("builder") {
            Some(Value::String(id)) => id.clone(),
            _ => {
                return Err(format!(
                    "image {} has no outputs.builder: its builder was not started (the pending step did not succeed)",
                    req.name
                )
                .into())
            }
        };
        let name = ami_name(&self.scope, &req.name, &builder);
        let ami = match self.find_ami(&ec2, &name, cancel).await? {
            Some(ami) => {
                log.line(format!("AMI {} ({name}) was already made: {}", ami.id, ami.state));
                ami.id
            }
            None => {
                if spec.build.is_empty() {
                    instances::stop(&ec2, std::slice::from_ref(&builder), log, cancel).await?;
                } else {
                    log.line(format!(
                        "waiting for builder {builder} to run the build commands and power off (at most {}s)",
                        spec.build_timeout_secs
                    ));
                }
                let timeout = if spec.build.is_empty() {
                    STATE_TIMEOUT
                } else {
                    Duration::from_secs(spec.build_timeout_secs)
                };
                instances::wait_for(&ec2, std::slice::from_ref(&builder), "stopped", timeout, log, cancel)
                    .await
                    .map_err(|e| match e {
                        StepError::Failed(e) => StepError::Failed(format!(
                            "{e}; a builder that does not power off had a build command fail or hang: \
                             its console output says which"
                        )),
                        c => c,
                    })?;
                let tags = owner_tags(ResourceType::Image, &self.scope, &resource, Some(&req.run_id));
                let call = ec2
                    .client
                    .create_image()
                    .instance_id(&builder)
                    .name(&name)
                    .description(format!("opsd image {} from {}", req.name, spec.base_ami))
                    .tag_specifications(tags)
                    .send();
                let made = ec2.call("CreateImage", cancel, call).await?;
                let id = made
                    .image_id()
                    .map(str::to_string)
                    .ok_or_else(|| StepError::Failed("CreateImage: the answer names no image".into()))?;
                log.line(format!("CreateImage {id} ({name}) from builder {builder}"));
                id
            }
        };
        self.wait_available(&ec2, &ami, log, cancel).await?;
        instances::terminate(&ec2, std::slice::from_ref(&builder), log, cancel).await?;
        // Earlier builds' AMIs are replaced by this one.
        for old in self.amis_of(&ec2, &resource, cancel).await? {
            if old.id != ami {
                self.deregister(&ec2, &old, log, cancel).await?;
            }
        }
        let mut out = Object::new();
        out.insert("ami".into(), json!(ami));
        out.insert("ami_name".into(), json!(name));
        out.insert("region".into(), json!(ec2.region));
        out.insert("start".into(), spec.start.map(Value::String).unwrap_or(Value::Null));
        out.insert("builder".into(), Value::Null);
        Ok(out)
    }

    /// `remove_image`: terminates any builder and deregisters every AMI of
    /// the image (and deletes their snapshots).
    pub(super) async fn remove_image(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let ec2 = self.ec2().await?;
        let resource = format!("image/{}", req.name);
        let builders: Vec<String> = instances::list(&ec2, &self.scope, &resource, &LIVE, cancel)
            .await?
            .into_iter()
            .map(|f| f.id)
            .collect();
        instances::terminate(&ec2, &builders, log, cancel).await?;
        let amis = self.amis_of(&ec2, &resource, cancel).await?;
        for ami in &amis {
            self.deregister(&ec2, ami, log, cancel).await?;
        }
        log.line(format!("removed {} AMIs of {resource}", amis.len()));
        let mut out = Object::new();
        out.insert("ami".into(), Value::Null);
        out.insert("builder".into(), Value::Null);
        Ok(out)
    }

    /// The AMI called `name` owned by this account, if there is one.
    async fn find_ami(&self, ec2: &Ec2, name: &str, cancel: &CancellationToken) -> Result<Option<Ami>, StepError> {
        let call = ec2
            .client
            .describe_images()
            .owners("self")
            .filters(ami_filter("name", name))
            .send();
        let out = ec2.call("DescribeImages", cancel, call).await?;
        Ok(out.images().iter().find_map(ami_of))
    }

    /// Every AMI tagged as this opsd cluster's image `resource`.
    async fn amis_of(&self, ec2: &Ec2, resource: &str, cancel: &CancellationToken) -> Result<Vec<Ami>, StepError> {
        let call = ec2
            .client
            .describe_images()
            .owners("self")
            .filters(ami_filter(&format!("tag:{TAG_CLUSTER}"), &self.scope))
            .filters(ami_filter(&format!("tag:{TAG_RESOURCE}"), resource))
            .send();
        let out = ec2.call("DescribeImages", cancel, call).await?;
        Ok(out.images().iter().filter_map(ami_of).collect())
    }

    /// Polls until `ami` is available; fails if it failed.
    async fn wait_available(
        &self,
        ec2: &Ec2,
        ami: &str,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let started = std::time::Instant::now();
        let mut last = String::new();
        loop {
            let call = ec2.client.describe_images().image_ids(ami).send();
            let out = ec2.call("DescribeImages", cancel, call).await?;
            let state = out
                .images()
                .first()
                .and_then(|i| i.state())
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if state != last {
                log.line(format!("AMI {ami} is {state}"));
                last = state.clone();
            }
            match state.as_str() {
                "available" => return Ok(()),
                "failed" | "invalid" | "deregistered" | "error" => {
                    return Err(StepError::Failed(format!("AMI {ami} is {state}: it cannot be used")))
                }
                _ => {}
            }
            if started.elapsed() > AMI_TIMEOUT {
                return Err(StepError::Failed(format!("AMI {ami} was not available within an hour")));
            }
            pause(instances::POLL_EVERY, cancel).await?;
        }
    }

    /// `DeregisterImage`, then `DeleteSnapshot` of each of its snapshots.
    async fn deregister(
        &self,
        ec2: &Ec2,
        ami: &Ami,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let call = ec2.client.deregister_image().image_id(&ami.id).send();
        ec2.call("DeregisterImage", cancel, call).await?;
        log.line(format!("deregistered AMI {}", ami.id));
        for snap in &ami.snapshots {
            let call = ec2.client.delete_snapshot().snapshot_id(snap).send();
            match ec2.call("DeleteSnapshot", cancel, call).await {
                Ok(_) => log.line(format!("deleted snapshot {snap}")),
                Err(StepError::Failed(e)) if e.contains("NotFound") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn ami_of(i: &aws_sdk_ec2::types::Image) -> Option<Ami> {
    Some(Ami {
        id: i.image_id()?.to_string(),
        state: i.state().map(|s| s.as_str().to_string()).unwrap_or_default(),
        snapshots: i
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
            .collect(),
    })
}
