//! Instances as the steps see them: found by their opsd tags (never only by
//! what the outputs say, so an instance an interrupted attempt started is
//! found), started with a client token, waited for, stopped and terminated.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, InstanceType, ResourceType, ShutdownBehavior, Tag, TagSpecification,
};
use tokio_util::sync::CancellationToken;

use super::sdk::{pause, Ec2};
use super::spec::{base64, TAG_CLUSTER, TAG_INDEX, TAG_RESOURCE, TAG_ROLE, TAG_RUN};
use crate::ops::{LogSink, StepError};

/// How often a wait asks EC2 again.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// How long instances may take to reach running, stopped or terminated.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(600);

/// One instance opsd made, as its tags and EC2 describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `i-...`.
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    /// Its `opsd.index` tag, if it has a valid one.
    pub index: Option<u64>,
    /// Its `opsd.role` tag.
    pub role: String,
    /// Its `opsd.run` tag.
    pub run: String,
    /// Its private IPv4 address, once it has one.
    pub private_ip: Option<String>,
    /// Its public IPv4 address, if any.
    pub public_ip: Option<String>,
    /// When it was launched (seconds since the epoch), to keep the oldest of twins.
    pub launched: i64,
}

/// The states of an instance that still exists (and costs).
pub const LIVE: [&str; 5] = ["pending", "running", "stopping", "stopped", "shutting-down"];

fn tag_value<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

fn found(i: &Instance) -> Option<Found> {
    Some(Found {
        id: i.instance_id()?.to_string(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        index: tag_value(i, TAG_INDEX).and_then(|v| v.parse().ok()),
        role: tag_value(i, TAG_ROLE).unwrap_or_default().to_string(),
        run: tag_value(i, TAG_RUN).unwrap_or_default().to_string(),
        private_ip: i.private_ip_address().map(str::to_string),
        public_ip: i.public_ip_address().map(str::to_string),
        launched: i.launch_time().map(|t| t.secs()).unwrap_or_default(),
    })
}

fn filter(name: &str, values: &[&str]) -> Filter {
    let mut f = Filter::builder().name(name);
    for v in values {
        f = f.values(*v);
    }
    f.build()
}

/// The tags of something of `resource` other than an instance (its key
/// pair, security group, AMI): this opsd cluster, the resource and, for
/// what a run made, the run.
pub fn owner_tags(kind: ResourceType, scope: &str, resource: &str, run_id: Option<&str>) -> TagSpecification {
    let spec = TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(TAG_CLUSTER).value(scope).build())
        .tags(Tag::builder().key(TAG_RESOURCE).value(resource).build());
    match run_id {
        Some(run) => spec.tags(Tag::builder().key(TAG_RUN).value(run).build()).build(),
        None => spec.build(),
    }
}

/// The tags every instance of `resource` carries.
pub fn tags(scope: &str, resource: &str, run_id: &str, role: &str, index: Option<u64>) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
    let mut pairs = vec![
        (TAG_CLUSTER, scope.to_string()),
        (TAG_RESOURCE, resource.to_string()),
        (TAG_RUN, run_id.to_string()),
        (TAG_ROLE, role.to_string()),
        ("Name", format!("opsd {resource}")),
    ];
    if let Some(i) = index {
        pairs.push((TAG_INDEX, i.to_string()));
        pairs[4].1 = format!("opsd {resource} #{i}");
    }
    for (k, v) in pairs {
        spec = spec.tags(Tag::builder().key(k).value(v).build());
    }
    spec.build()
}

/// Every instance of `resource` made by this opsd cluster in one of
/// `states`, by its tags, in launch order.
pub async fn list(
    ec2: &Ec2,
    scope: &str,
    resource: &str,
    states: &[&str],
    cancel: &CancellationToken,
) -> Result<Vec<Found>, StepError> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let call = ec2
            .client
            .describe_instances()
            .filters(filter(&format!("tag:{TAG_CLUSTER}"), &[scope]))
            .filters(filter(&format!("tag:{TAG_RESOURCE}"), &[resource]))
            .filters(filter("instance-state-name", states))
            .set_next_token(next.take())
            .send();
        let page = ec2.call("DescribeInstances", cancel, call).await?;
        for r in page.reservations() {
            out.extend(r.instances().iter().filter_map(found));
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    out.sort_by(|a, b| (a.launched, &a.id).cmp(&(b.launched, &b.id)));
    Ok(out)
}

/// What [`launch`] starts.
pub struct Launch<'a> {
    /// The AMI.
    pub ami: &'a str,
    /// The instance type.
    pub instance_type: &'a str,
    /// The idempotency token (see [`super::spec::client_token`]).
    pub token: String,
    /// Its tags.
    pub tags: TagSpecification,
    /// The boot script, if any.
    pub user_data: Option<String>,
    /// The key pair, if any.
    pub key_name: Option<&'a str>,
    /// The security group, if any.
    pub security_group: Option<&'a str>,
    /// The subnet, if any.
    pub subnet_id: Option<&'a str>,
    /// Whether a shutdown from inside stops it (a builder) rather than
    /// terminating it.
    pub stop_on_shutdown: bool,
}

/// `RunInstances` of one instance; its id.
pub async fn launch(ec2: &Ec2, l: Launch<'_>, cancel: &CancellationToken) -> Result<String, StepError> {
    let mut call = ec2
        .client
        .run_instances()
        .image_id(l.ami)
        .instance_type(InstanceType::from(l.instance_type))
        .min_count(1)
        .max_count(1)
        .client_token(l.token)
        .tag_specifications(l.tags)
        .set_user_data(l.user_data.map(|u| base64(u.as_bytes())))
        .set_key_name(l.key_name.map(str::to_string))
        .set_subnet_id(l.subnet_id.map(str::to_string));
    if let Some(sg) = l.security_group {
        call = call.security_group_ids(sg);
    }
    if l.stop_on_shutdown {
        call = call.instance_initiated_shutdown_behavior(ShutdownBehavior::Stop);
    }
    let out = ec2.call("RunInstances", cancel, call.send()).await?;
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .map(str::to_string)
        .ok_or_else(|| StepError::Failed("RunInstances: the answer names no instance".into()))
}

/// Describes `ids` (which must exist).
pub async fn describe(ec2: &Ec2, ids: &[String], cancel: &CancellationToken) -> Result<Vec<Found>, StepError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let call = ec2
        .client
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send();
    let page = ec2.call("DescribeInstances", cancel, call).await?;
    Ok(page
        .reservations()
        .iter()
        .flat_map(|r| r.instances().iter().filter_map(found))
        .collect())
}

/// Waits until every one of `ids` is in `state`, logging each change;
/// fails if one ends up terminated instead (unless that is the wait), or
/// after `timeout`. Returns them as described last.
pub async fn wait_for(
    ec2: &Ec2,
    ids: &[String],
    state: &str,
    timeout: Duration,
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<Vec<Found>, StepError> {
    let started = Instant::now();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let now = describe(ec2, ids, cancel).await?;
        for f in &now {
            if seen.get(&f.id) != Some(&f.state) {
                log.line(format!("instance {} is {}", f.id, f.state));
                seen.insert(f.id.clone(), f.state.clone());
            }
            if state != "terminated" && (f.state == "terminated" || f.state == "shutting-down") {
                return Err(StepError::Failed(format!(
                    "instance {} is {} while opsd waited for it to be {state}",
                    f.id, f.state
                )));
            }
        }
        if now.len() == ids.len() && now.iter().all(|f| f.state == state) {
            return Ok(now);
        }
        if started.elapsed() > timeout {
            let late: Vec<String> = now
                .iter()
                .filter(|f| f.state != state)
                .map(|f| format!("{} is {}", f.id, f.state))
                .collect();
            return Err(StepError::Failed(format!(
                "instances did not become {state} within {}: {}",
                humantime::format_duration(timeout),
                late.join(", ")
            )));
        }
        pause(POLL_EVERY, cancel).await?;
    }
}

/// `TerminateInstances` of `ids` (nothing if empty).
pub async fn terminate(ec2: &Ec2, ids: &[String], log: &LogSink, cancel: &CancellationToken) -> Result<(), StepError> {
    if ids.is_empty() {
        return Ok(());
    }
    let call = ec2
        .client
        .terminate_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send();
    ec2.call("TerminateInstances", cancel, call).await?;
    log.line(format!("terminating {}", ids.join(", ")));
    Ok(())
}

/// `StopInstances` of `ids` (nothing if empty).
pub async fn stop(ec2: &Ec2, ids: &[String], log: &LogSink, cancel: &CancellationToken) -> Result<(), StepError> {
    if ids.is_empty() {
        return Ok(());
    }
    let call = ec2.client.stop_instances().set_instance_ids(Some(ids.to_vec())).send();
    ec2.call("StopInstances", cancel, call).await?;
    log.line(format!("stopping {}", ids.join(", ")));
    Ok(())
}

/// `StartInstances` of `ids` (nothing if empty).
pub async fn start(ec2: &Ec2, ids: &[String], log: &LogSink, cancel: &CancellationToken) -> Result<(), StepError> {
    if ids.is_empty() {
        return Ok(());
    }
    let call = ec2.client.start_instances().set_instance_ids(Some(ids.to_vec())).send();
    ec2.call("StartInstances", cancel, call).await?;
    log.line(format!("starting {}", ids.join(", ")));
    Ok(())
}

/// Whether `state` names a state opsd may start an instance from.
pub fn is_stopped(state: &str) -> bool {
    state == InstanceStateName::Stopped.as_str()
}
