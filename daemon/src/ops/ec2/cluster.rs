//! The EC2 provider's cluster steps: a cluster is `size` instances of an
//! ec2 image's AMI, each tagged with the opsd cluster, the resource, the run
//! that started it and its index, in a security group and with a key pair
//! of the resource's own (made if absent, deleted on destroy).
//!
//! Before starting anything a step lists the resource's instances by tag,
//! so a step run again (a retry, a takeover after the leader died in the
//! middle of `RunInstances`) starts only the missing indices; each
//! `RunInstances` carries a client token made of the run and the index, so
//! even a call whose answer was lost is not made twice by EC2. Twins (two
//! live instances of one index) and instances beyond the size are
//! terminated, the oldest of each index kept.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, KeyType, ResourceType};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::instances::{self, owner_tags, Found, Launch, STATE_TIMEOUT};
use super::sdk::{code, describe, pause, Ec2};
use super::spec::{
    client_token, cluster_spec, machine_user_data, resource_name, ClusterSpec, SSH_KEY_SETTING, TAG_CLUSTER,
};
use super::{Ec2Provider, StepOut};
use crate::ops::{Fail, LogSink, Object, StepError, StepRequest};

/// The role tag of a cluster's instance.
const MACHINE: &str = "machine";

/// The states of an instance a cluster keeps (or starts again).
const KEPT: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// What a cluster runs, from its image resource.
struct ImageInfo {
    ami: String,
    start: Option<String>,
}

/// The key pair and security group of a cluster.
struct Access {
    key_name: String,
    group_id: String,
}

fn name_filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

impl Ec2Provider {
    /// The AMI of the cluster's image: an ec2 image in state built.
    fn cluster_image(&self, spec: &ClusterSpec) -> Result<ImageInfo, String> {
        let name = &spec.image;
        let outputs = self.lookup.built_image(name).map_err(|e| format!("spec.image: {e}"))?;
        let provider = self
            .lookup
            .spec("image", name)
            .and_then(|s| s.get("provider").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "local".into());
        if provider != "ec2" {
            return Err(format!(
                "spec.image: image {name} is built by the {provider} provider; an ec2 cluster runs an ec2 image"
            ));
        }
        let ami = outputs
            .get("ami")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("spec.image: image {name} has no outputs.ami"))?;
        Ok(ImageInfo {
            ami: ami.to_string(),
            start: outputs.get("start").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// `start_machines` and `restart_machines`: every index below the size
    /// has one running instance.
    pub(super) async fn start_machines(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let spec = cluster_spec(&req.spec)?;
        let image = self.cluster_image(&spec)?;
        let ec2 = self.ec2().await?;
        let resource = format!("cluster/{}", req.name);
        let access = self.access(&ec2, req, &spec, log, cancel).await?;

        let found = instances::list(&ec2, &self.scope, &resource, &KEPT, cancel).await?;
        let mut kept: BTreeMap<u64, Found> = BTreeMap::new();
        let mut extra = Vec::new();
        for f in found {
            match f.index.filter(|i| *i < spec.size && f.role == MACHINE) {
                Some(i) if !kept.contains_key(&i) => {
                    kept.insert(i, f);
                }
                _ => extra.push(f.id),
            }
        }
        if !extra.is_empty() {
            log.line(format!(
                "terminating instances beyond the size {} or twins of a kept one: {}",
                spec.size,
                extra.join(", ")
            ));
            instances::terminate(&ec2, &extra, log, cancel).await?;
        }
        for f in kept.values() {
            log.line(format!(
                "machine {} is instance {} ({}), started by run {}",
                f.index.unwrap_or_default(),
                f.id,
                f.state,
                f.run
            ));
        }
        let stopped: Vec<String> = kept
            .values()
            .filter(|f| instances::is_stopped(&f.state))
            .map(|f| f.id.clone())
            .collect();
        instances::start(&ec2, &stopped, log, cancel).await?;

        let user_data = machine_user_data(&spec, image.start.as_deref(), &req.name);
        let mut ids: BTreeMap<u64, String> = kept.iter().map(|(i, f)| (*i, f.id.clone())).collect();
        for i in (0..spec.size).filter(|i| !kept.contains_key(i)) {
            let launch = Launch {
                ami: &image.ami,
                instance_type: &spec.instance_type,
                token: client_token(&self.scope, &resource, &req.run_id, &i.to_string()),
                tags: instances::tags(&self.scope, &resource, &req.run_id, MACHINE, Some(i)),
                user_data: user_data.clone(),
                key_name: Some(&access.key_name),
                security_group: Some(&access.group_id),
                subnet_id: spec.subnet_id.as_deref(),
                stop_on_shutdown: false,
            };
            let id = instances::launch(&ec2, launch, cancel).await.map_err(|e| Fail {
                error: e,
                outputs: partial_outputs(&ids, &access),
            })?;
            log.line(format!("RunInstances: machine {i} is instance {id} ({})", image.ami));
            ids.insert(i, id);
        }
        let all: Vec<String> = ids.values().cloned().collect();
        let running = instances::wait_for(&ec2, &all, "running", STATE_TIMEOUT, log, cancel)
            .await
            .map_err(|e| Fail {
                error: e,
                outputs: partial_outputs(&ids, &access),
            })?;
        let by_id: BTreeMap<&str, &Found> = running.iter().map(|f| (f.id.as_str(), f)).collect();
        let machines: Vec<Value> = ids
            .iter()
            .filter_map(|(i, id)| by_id.get(id.as_str()).map(|f| machine_record(*i, f, &spec, &access)))
            .collect();
        log.line(format!("{} instances running", machines.len()));
        Ok(cluster_outputs(machines, &spec.image, &access, &ec2.region))
    }

    /// `stop_machines`: stops every instance of the cluster, keeping them.
    pub(super) async fn stop_machines(&self, req: &StepRequest, log: &LogSink, cancel: &CancellationToken) -> StepOut {
        let ec2 = self.ec2().await?;
        let resource = format!("cluster/{}", req.name);
        let found = instances::list(&ec2, &self.scope, &resource, &KEPT, cancel).await?;
        let ids: Vec<String> = found.iter().map(|f| f.id.clone()).collect();
        let to_stop: Vec<String> = found
            .iter()
            .filter(|f| !instances::is_stopped(&f.state))
            .map(|f| f.id.clone())
            .collect();
        instances::stop(&ec2, &to_stop, log, cancel).await?;
        let stopped = instances::wait_for(&ec2, &ids, "stopped", STATE_TIMEOUT, log, cancel).await?;
        let mut out = Object::new();
        let machines: Vec<Value> = req
            .outputs
            .get("machines")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let mut m = m.clone();
                        let state = m
                            .get("instance_id")
                            .and_then(Value::as_str)
                            .and_then(|id| stopped.iter().find(|f| f.id == id))
                            .map(|f| f.state.clone());
                        if let (Some(obj), Some(state)) = (m.as_object_mut(), state) {
                            obj.insert("state".into(), json!(state));
                        }
                        m
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert("machines".into(), Value::Array(machines));
        Ok(out)
    }

    /// `destroy_machines`: terminates every instance tagged with the
    /// cluster (not only those its outputs list), waits until they are
    /// terminated, then deletes its security group, key pair and the
    /// setting holding the private key.
    pub(super) async fn destroy_machines(
        &self,
        req: &StepRequest,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> StepOut {
        let ec2 = self.ec2().await?;
        let resource = format!("cluster/{}", req.name);
        let found = instances::list(&ec2, &self.scope, &resource, &instances::LIVE, cancel).await?;
        let ids: Vec<String> = found.iter().map(|f| f.id.clone()).collect();
        instances::terminate(&ec2, &ids, log, cancel).await?;
        instances::wait_for(&ec2, &ids, "terminated", STATE_TIMEOUT, log, cancel).await?;
        let name = resource_name(&self.scope, "cluster", &req.name);
        if let Some(group_id) = self.find_group(&ec2, &name, cancel).await? {
            self.delete_group(&ec2, &group_id, log, cancel).await?;
        }
        let call = ec2.client.delete_key_pair().key_name(&name).send();
        ec2.call("DeleteKeyPair", cancel, call).await?;
        log.line(format!("deleted key pair {name}"));
        self.keep_private_key(req, None).await?;
        let mut out = Object::new();
        out.insert("machines".into(), json!([]));
        out.insert("security_group".into(), Value::Null);
        out.insert("key_name".into(), Value::Null);
        Ok(out)
    }

    /// The cluster's key pair and security group, made if absent.
    async fn access(
        &self,
        ec2: &Ec2,
        req: &StepRequest,
        spec: &ClusterSpec,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<Access, StepError> {
        let name = resource_name(&self.scope, "cluster", &req.name);
        self.ensure_key_pair(ec2, req, &name, log, cancel).await?;
        let group_id = match self.find_group(ec2, &name, cancel).await? {
            Some(id) => id,
            None => self.create_group(ec2, req, spec, &name, log, cancel).await?,
        };
        Ok(Access {
            key_name: name,
            group_id,
        })
    }

    /// The key pair `name`, with its private key kept in the resource's
    /// settings. A key pair whose private key opsd does not hold (an
    /// attempt stopped between making it and recording the key; no instance
    /// was started with it, as instances start only after) is made anew.
    async fn ensure_key_pair(
        &self,
        ec2: &Ec2,
        req: &StepRequest,
        name: &str,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let held = self
            .lookup
            .settings(&req.kind, &req.name)
            .get(SSH_KEY_SETTING)
            .is_some_and(|k| !k.is_empty());
        let call = ec2.client.describe_key_pairs().key_names(name).send();
        let exists = tokio::select! {
            r = call => match r {
                Ok(out) => !out.key_pairs().is_empty(),
                Err(e) if code(&e) == Some("InvalidKeyPair.NotFound") => false,
                Err(e) => return Err(StepError::Failed(describe("DescribeKeyPairs", ec2.attempt_timeout, &e))),
            },
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        if exists && (held || self.node.is_none()) {
            return Ok(());
        }
        if exists {
            log.line(format!(
                "key pair {name} exists but opsd does not hold its private key; making it anew"
            ));
            let call = ec2.client.delete_key_pair().key_name(name).send();
            ec2.call("DeleteKeyPair", cancel, call).await?;
        }
        let tags = owner_tags(
            ResourceType::KeyPair,
            &self.scope,
            &format!("cluster/{}", req.name),
            None,
        );
        let call = ec2
            .client
            .create_key_pair()
            .key_name(name)
            .key_type(KeyType::Ed25519)
            .tag_specifications(tags)
            .send();
        let made = ec2.call("CreateKeyPair", cancel, call).await?;
        log.line(format!("made key pair {name}"));
        self.keep_private_key(req, made.key_material().map(str::to_string))
            .await?;
        Ok(())
    }

    /// The id of this cluster's security group `name`, if it exists.
    async fn find_group(&self, ec2: &Ec2, name: &str, cancel: &CancellationToken) -> Result<Option<String>, StepError> {
        let call = ec2
            .client
            .describe_security_groups()
            .filters(name_filter("group-name", name))
            .filters(name_filter(&format!("tag:{TAG_CLUSTER}"), &self.scope))
            .send();
        let out = ec2.call("DescribeSecurityGroups", cancel, call).await?;
        Ok(out
            .security_groups()
            .iter()
            .find_map(|g| g.group_id().map(str::to_string)))
    }

    /// Makes the security group `name`: ingress to the port and to ssh from
    /// `spec.allow_from`, in the VPC of `spec.subnet_id` (else the default).
    async fn create_group(
        &self,
        ec2: &Ec2,
        req: &StepRequest,
        spec: &ClusterSpec,
        name: &str,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, StepError> {
        let vpc = match &spec.subnet_id {
            Some(subnet) => {
                let call = ec2.client.describe_subnets().subnet_ids(subnet).send();
                let out = ec2.call("DescribeSubnets", cancel, call).await?;
                out.subnets().first().and_then(|s| s.vpc_id()).map(str::to_string)
            }
            None => None,
        };
        let tags = owner_tags(
            ResourceType::SecurityGroup,
            &self.scope,
            &format!("cluster/{}", req.name),
            None,
        );
        let call = ec2
            .client
            .create_security_group()
            .group_name(name)
            .description(format!("opsd cluster/{}", req.name))
            .set_vpc_id(vpc)
            .tag_specifications(tags)
            .send();
        let made = ec2.call("CreateSecurityGroup", cancel, call).await?;
        let id = made
            .group_id()
            .map(str::to_string)
            .ok_or_else(|| StepError::Failed("CreateSecurityGroup: the answer names no group".into()))?;
        let mut ranges = Vec::new();
        for cidr in &spec.allow_from {
            ranges.push(IpRange::builder().cidr_ip(cidr).build());
        }
        let mut call = ec2.client.authorize_security_group_ingress().group_id(&id);
        for port in [spec.port, 22] {
            call = call.ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(i32::from(port))
                    .to_port(i32::from(port))
                    .set_ip_ranges(Some(ranges.clone()))
                    .build(),
            );
        }
        let authorized = tokio::select! {
            r = call.send() => r,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        match authorized {
            Ok(_) => {}
            Err(e) if code(&e) == Some("InvalidPermission.Duplicate") => {}
            Err(e) => {
                return Err(StepError::Failed(describe(
                    "AuthorizeSecurityGroupIngress",
                    ec2.attempt_timeout,
                    &e,
                )))
            }
        }
        log.line(format!(
            "made security group {name} ({id}): tcp {} and 22 from {}",
            spec.port,
            spec.allow_from.join(", ")
        ));
        Ok(id)
    }

    /// Deletes a security group, waiting while EC2 still counts terminated
    /// instances in it (`DependencyViolation`).
    async fn delete_group(
        &self,
        ec2: &Ec2,
        id: &str,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let mut tries = 0;
        loop {
            let call = ec2.client.delete_security_group().group_id(id).send();
            let r = tokio::select! {
                r = call => r,
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            };
            match r {
                Ok(_) => {
                    log.line(format!("deleted security group {id}"));
                    return Ok(());
                }
                Err(e) if code(&e) == Some("InvalidGroup.NotFound") => return Ok(()),
                Err(e) if code(&e) == Some("DependencyViolation") && tries < 30 => {
                    tries += 1;
                    pause(instances::POLL_EVERY, cancel).await?;
                }
                Err(e) => {
                    return Err(StepError::Failed(describe(
                        "DeleteSecurityGroup",
                        ec2.attempt_timeout,
                        &e,
                    )))
                }
            }
        }
    }
}

/// One machine of `outputs.machines`.
fn machine_record(index: u64, f: &Found, spec: &ClusterSpec, access: &Access) -> Value {
    let ip = f.private_ip.clone().unwrap_or_default();
    json!({
        "index": index,
        "address": format!("{ip}:{}", spec.port),
        "instance_id": f.id,
        "private_ip": f.private_ip,
        "public_ip": f.public_ip,
        "state": f.state,
        "port": spec.port,
        "ssh_user": spec.ssh_user,
        "key_name": access.key_name,
    })
}

/// A cluster's outputs.
fn cluster_outputs(machines: Vec<Value>, image: &str, access: &Access, region: &str) -> Object {
    let mut out = Object::new();
    out.insert("machines".into(), Value::Array(machines));
    out.insert("image".into(), json!(image));
    out.insert("security_group".into(), json!(access.group_id));
    out.insert("key_name".into(), json!(access.key_name));
    out.insert("region".into(), json!(region));
    out
}

/// What a failed start reports: the instances it knows of (a destroy finds
/// them by tag anyway).
fn partial_outputs(ids: &BTreeMap<u64, String>, access: &Access) -> Object {
    let machines: Vec<Value> = ids
        .iter()
        .map(|(i, id)| json!({"index": i, "instance_id": id}))
        .collect();
    let mut out = Object::new();
    out.insert("instances".into(), Value::Array(machines));
    out.insert("security_group".into(), json!(access.group_id));
    out.insert("key_name".into(), json!(access.key_name));
    out
}
