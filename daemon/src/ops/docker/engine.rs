//! The Docker engine as the Docker provider (and opsd's self-deploy) use it:
//! a thin layer over `bollard`, the Docker engine API client, with
//! bollard-free types and errors that say what failed and where. No
//! shelling out to the `docker` CLI.
//!
//! Everything opsd makes carries labels ([`LABEL_RESOURCE`], [`LABEL_RUN`],
//! [`LABEL_INDEX`]), so a step that runs again after a takeover finds what
//! an earlier attempt made instead of making twins, and nothing opsd made is
//! unlisted.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::ops::{LogSink, StepError};

/// Label on every container, network and image opsd makes: `KIND/NAME` of
/// the resource it belongs to.
pub const LABEL_RESOURCE: &str = "opsd.resource";
/// Label: the run that made it.
pub const LABEL_RUN: &str = "opsd.run";
/// Label on a container: its machine index in the resource.
pub const LABEL_INDEX: &str = "opsd.index";
/// Label on everything opsd makes: the id of the opsd cluster that made it,
/// so two opsd clusters sharing one engine never see each other's things.
pub const LABEL_CLUSTER: &str = "opsd.cluster";

/// How long connecting (and the first answer) may take: a dead or absent
/// engine fails a step within this, never hangs it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one engine call (not a build, not a stop's grace) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a container's network is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A user-defined bridge network of this name (see [`Engine::ensure_network`]).
    Bridge(String),
    /// The host's network namespace.
    Host,
}

/// A container to create (or find, by name) and start.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Its name, unique on the engine.
    pub name: String,
    /// The image reference (a tag or an id).
    pub image: String,
    /// The command, overriding the image's; `None` keeps the image's.
    pub cmd: Option<Vec<String>>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Labels ([`LABEL_RESOURCE`], [`LABEL_RUN`], [`LABEL_INDEX`], ...).
    pub labels: BTreeMap<String, String>,
    /// Its network.
    pub network: Network,
    /// Bind mounts, `HOST_PATH:CONTAINER_PATH[:ro]`.
    pub binds: Vec<String>,
}

/// A container as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its name (without Docker's leading `/`).
    pub name: String,
    /// Docker's state: `created`, `running`, `exited`, ...
    pub state: String,
    /// Its exit code, once it exited.
    pub exit_code: Option<i64>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its IPv4 address on its bridge network, while it has one.
    pub ip: Option<String>,
}

impl Container {
    /// Whether it is running.
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// An image as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its id (`sha256:...`).
    pub id: String,
    /// Its tags (`repo:tag`).
    pub tags: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A connection to the Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: bollard::Docker,
    /// The engine's own ID (from its info): which engine holds an image.
    id: String,
    /// Where it was reached, for messages.
    host: String,
}

/// Whether a Docker error is the engine saying "no such thing".
fn not_found(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 404, .. })
}

/// A Docker error as one line: the engine's own message when it sent one.
fn describe(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { status_code, message } => {
            format!("{} (HTTP {status_code})", message.trim())
        }
        DockerError::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

/// Runs one engine call under [`CALL_TIMEOUT`] (or `limit`): its error, or
/// the timeout, says `what` was being done.
async fn within<T>(
    what: impl std::fmt::Display,
    limit: Duration,
    call: impl Future<Output = Result<T, DockerError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("docker: {what}: {}", describe(&e))),
        Err(_) => Err(format!("docker: {what}: no answer from the engine within {limit:?}")),
    }
}

/// Like [`within`], but "no such thing" is `Ok(None)`.
async fn within_found<T>(
    what: impl std::fmt::Display,
    limit: Duration,
    call: impl Future<Output = Result<T, DockerError>>,
) -> Result<Option<T>, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(e)) if not_found(&e) => Ok(None),
        Ok(Err(e)) => Err(format!("docker: {what}: {}", describe(&e))),
        Err(_) => Err(format!("docker: {what}: no answer from the engine within {limit:?}")),
    }
}

/// `k=v` label filters for list calls.
fn label_filters(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    );
    filters
}

/// Labels as the engine's map.
fn label_map(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The container as inspected, in this module's terms; its address is the
/// one on `network` if given, else on any network it has.
fn container_of(c: ContainerInspectResponse, network: Option<&str>) -> Container {
    let state = c.state.as_ref();
    let networks = c.network_settings.and_then(|n| n.networks).unwrap_or_default();
    let ip = network
        .and_then(|n| networks.get(n))
        .or_else(|| {
            networks
                .values()
                .find(|e| e.ip_address.as_deref().is_some_and(|ip| !ip.is_empty()))
        })
        .and_then(|e| e.ip_address.clone())
        .filter(|ip| !ip.is_empty());
    Container {
        id: c.id.unwrap_or_default(),
        name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
        state: state.and_then(|s| s.status).map(|s| s.to_string()).unwrap_or_default(),
        exit_code: state
            .and_then(|s| s.exit_code)
            .filter(|_| !state.and_then(|s| s.running).unwrap_or(false)),
        labels: c
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ip,
    }
}

impl Engine {
    /// Connects to the engine named by `DOCKER_HOST`, or the local socket,
    /// and checks within a few seconds that it answers; the error says where
    /// it tried and what it got.
    pub async fn connect() -> Result<Engine, StepError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        Engine::connect_to(host).await
    }

    /// Connects to the engine at `host` (`unix://PATH`, `tcp://HOST:PORT`,
    /// ...), as [`Engine::connect`] does.
    pub async fn connect_to(host: String) -> Result<Engine, StepError> {
        let fail = |why: String| {
            StepError::Failed(format!(
                "cannot reach the Docker engine at {host}: {why} (is Docker running? DOCKER_HOST names another engine)"
            ))
        };
        let docker = bollard::Docker::connect_with_host(&host)
            .map_err(|e| fail(describe(&e)))?
            .with_timeout(CALL_TIMEOUT);
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(fail(describe(&e))),
            Err(_) => return Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        let info = match tokio::time::timeout(CONNECT_TIMEOUT, docker.info()).await {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => return Err(fail(describe(&e))),
            Err(_) => return Err(fail(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        let id = info
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| fail("its info has no ID".into()))?;
        Ok(Engine { docker, id, host })
    }

    /// The engine's own ID: an image built on one engine can only run on
    /// that engine (there is no registry between engines).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the engine was reached (`DOCKER_HOST` or the local socket).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Builds an image tagged `tag` from a build context (a tar holding a
    /// `Dockerfile`), streaming the build's output to `log`; returns the
    /// image id. A failed build fails with the build's own error.
    pub async fn build_image(
        &self,
        tag: &str,
        context: Vec<u8>,
        labels: &BTreeMap<String, String>,
        log: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, StepError> {
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .labels(&label_map(labels))
            .build();
        let mut stream = self
            .docker
            .build_image(options, None, Some(bollard::body_full(context.into())));
        let mut partial = String::new();
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            };
            let Some(item) = item else { break };
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.or(info.status) {
                        partial.push_str(&text);
                        while let Some(end) = partial.find('\n') {
                            let line: String = partial.drain(..=end).collect();
                            let line = line.trim_end();
                            if !line.is_empty() {
                                log.line(format!("build: {line}"));
                            }
                        }
                    }
                }
                Err(e) => {
                    if !partial.trim().is_empty() {
                        log.line(format!("build: {}", partial.trim_end()));
                    }
                    return Err(StepError::Failed(format!(
                        "the build of {tag} failed: {}",
                        describe(&e)
                    )));
                }
            }
        }
        if !partial.trim().is_empty() {
            log.line(format!("build: {}", partial.trim_end()));
        }
        let image = within(
            format!("inspecting the image {tag}"),
            CALL_TIMEOUT,
            self.docker.inspect_image(tag),
        )
        .await?;
        image
            .id
            .ok_or_else(|| StepError::Failed(format!("docker: the image {tag} has no id after its build")))
    }

    /// The id of the image `tag`, if there is one.
    pub async fn image_id(&self, tag: &str) -> Result<Option<String>, StepError> {
        let image = within_found(
            format!("inspecting the image {tag}"),
            CALL_TIMEOUT,
            self.docker.inspect_image(tag),
        )
        .await?;
        Ok(image.and_then(|i| i.id))
    }

    /// Every image carrying all of `labels`.
    pub async fn images(&self, labels: &[(&str, &str)]) -> Result<Vec<Image>, StepError> {
        let options = ListImagesOptionsBuilder::default()
            .all(false)
            .filters(&label_filters(labels))
            .build();
        let list = within("listing images", CALL_TIMEOUT, self.docker.list_images(Some(options))).await?;
        Ok(list
            .into_iter()
            .map(|i| Image {
                id: i.id,
                tags: i.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect(),
                labels: i.labels.into_iter().collect(),
            })
            .collect())
    }

    /// Removes the image `tag`; one that is not there is already removed.
    pub async fn remove_image(&self, tag: &str) -> Result<(), StepError> {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        within_found(
            format!("removing the image {tag}"),
            CALL_TIMEOUT,
            self.docker.remove_image(tag, Some(options), None),
        )
        .await?;
        Ok(())
    }

    /// Removes the image `id` unless a container (running or stopped) uses
    /// it: `Ok(false)` then. One that is not there is already removed.
    pub async fn remove_unused_image(&self, id: &str) -> Result<bool, StepError> {
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        match tokio::time::timeout(CALL_TIMEOUT, self.docker.remove_image(id, Some(options), None)).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if not_found(&e) => Ok(true),
            Ok(Err(DockerError::DockerResponseServerError { status_code: 409, .. })) => Ok(false),
            Ok(Err(e)) => Err(StepError::Failed(format!(
                "docker: removing the image {id}: {}",
                describe(&e)
            ))),
            Err(_) => Err(StepError::Failed(format!(
                "docker: removing the image {id}: no answer from the engine within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    /// Creates the bridge network `name` with `labels` unless it exists.
    pub async fn ensure_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), StepError> {
        let what = format!("inspecting the network {name}");
        let found = within_found(what, CALL_TIMEOUT, self.docker.inspect_network(name, None)).await?;
        if found.is_some() {
            return Ok(());
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(label_map(labels)),
            ..Default::default()
        };
        match tokio::time::timeout(CALL_TIMEOUT, self.docker.create_network(request)).await {
            Ok(Ok(_)) => Ok(()),
            // Made in the meantime (another attempt of the same step).
            Ok(Err(DockerError::DockerResponseServerError { status_code: 409, .. })) => Ok(()),
            Ok(Err(e)) => Err(StepError::Failed(format!(
                "docker: creating the network {name}: {}",
                describe(&e)
            ))),
            Err(_) => Err(StepError::Failed(format!(
                "docker: creating the network {name}: no answer from the engine within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    /// The names of every network carrying all of `labels`.
    pub async fn networks(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, StepError> {
        let options = ListNetworksOptionsBuilder::default()
            .filters(&label_filters(labels))
            .build();
        let list = within(
            "listing networks",
            CALL_TIMEOUT,
            self.docker.list_networks(Some(options)),
        )
        .await?;
        Ok(list.into_iter().filter_map(|n| n.name).collect())
    }

    /// Removes the network `name`; one that is not there is already removed.
    pub async fn remove_network(&self, name: &str) -> Result<(), StepError> {
        within_found(
            format!("removing the network {name}"),
            CALL_TIMEOUT,
            self.docker.remove_network(name),
        )
        .await?;
        Ok(())
    }

    /// Creates the named volume `name` with `labels` unless it exists (a
    /// node's data that outlives its container, for opsd's own nodes).
    pub async fn ensure_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), StepError> {
        let what = format!("inspecting the volume {name}");
        if within_found(what, CALL_TIMEOUT, self.docker.inspect_volume(name))
            .await?
            .is_some()
        {
            return Ok(());
        }
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(label_map(labels)),
            ..Default::default()
        };
        within(
            format!("creating the volume {name}"),
            CALL_TIMEOUT,
            self.docker.create_volume(request),
        )
        .await?;
        Ok(())
    }

    /// Removes the volume `name`; one that is not there is already removed.
    pub async fn remove_volume(&self, name: &str) -> Result<(), StepError> {
        let options = bollard::query_parameters::RemoveVolumeOptionsBuilder::default()
            .force(true)
            .build();
        within_found(
            format!("removing the volume {name}"),
            CALL_TIMEOUT,
            self.docker.remove_volume(name, Some(options)),
        )
        .await?;
        Ok(())
    }

    /// The names of the volumes carrying all of `labels`.
    pub async fn volumes(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, StepError> {
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&label_filters(labels))
            .build();
        let listed = within("listing volumes", CALL_TIMEOUT, self.docker.list_volumes(Some(options))).await?;
        Ok(listed.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect())
    }

    /// Every container (running or not) carrying all of `labels`.
    pub async fn containers(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>, StepError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&label_filters(labels))
            .build();
        let list = within(
            "listing containers",
            CALL_TIMEOUT,
            self.docker.list_containers(Some(options)),
        )
        .await?;
        let mut out = Vec::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            // Inspected one by one: the list has no exit code, and a
            // container removed in the meantime is simply not there.
            if let Some(c) = self.find(&id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The container `name_or_id`, if it exists.
    pub async fn find(&self, name_or_id: &str) -> Result<Option<Container>, StepError> {
        let found = within_found(
            format!("inspecting the container {name_or_id}"),
            CALL_TIMEOUT,
            self.docker.inspect_container(name_or_id, None),
        )
        .await?;
        Ok(found.map(|c| container_of(c, None)))
    }

    /// Creates the container `spec.name` unless one of that name exists,
    /// and starts it unless it runs; returns it as inspected after start.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<Container, StepError> {
        let existing = self.find(&spec.name).await?;
        // A name is only ever given to one resource's container: one of
        // another resource (names fold case and odd characters) is refused.
        if let Some(c) = &existing {
            let theirs = c.labels.get(LABEL_RESOURCE);
            if theirs != spec.labels.get(LABEL_RESOURCE) {
                return Err(StepError::Failed(format!(
                    "docker: the container name {} is taken by {}",
                    spec.name,
                    theirs.map_or("a container opsd did not make".to_string(), |r| format!("resource {r}"))
                )));
            }
        }
        let id = match existing {
            Some(c) if c.running() => return Ok(c),
            Some(c) => c.id,
            None => self.create(spec).await?,
        };
        self.start(&id).await
    }

    /// Creates the container of `spec` (one of that name made in the
    /// meantime is taken instead); returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, StepError> {
        let (network_mode, endpoints) = match &spec.network {
            Network::Bridge(name) => (
                name.clone(),
                Some(NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(name.clone(), EndpointSettings::default())])),
                }),
            ),
            Network::Host => ("host".to_string(), None),
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(label_map(&spec.labels)),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode),
                binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
                ..Default::default()
            }),
            networking_config: endpoints,
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        match tokio::time::timeout(CALL_TIMEOUT, self.docker.create_container(Some(options), body)).await {
            Ok(Ok(created)) => Ok(created.id),
            Ok(Err(DockerError::DockerResponseServerError { status_code: 409, .. })) => {
                match self.find(&spec.name).await? {
                    Some(c) => Ok(c.id),
                    None => Err(StepError::Failed(format!(
                        "docker: creating the container {}: its name is taken, yet it cannot be found",
                        spec.name
                    ))),
                }
            }
            Ok(Err(e)) => Err(StepError::Failed(format!(
                "docker: creating the container {} of image {}: {}",
                spec.name,
                spec.image,
                describe(&e)
            ))),
            Err(_) => Err(StepError::Failed(format!(
                "docker: creating the container {}: no answer from the engine within {CALL_TIMEOUT:?}",
                spec.name
            ))),
        }
    }

    /// Starts the container `id` (a running one is left alone).
    pub async fn start(&self, id: &str) -> Result<Container, StepError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.docker.start_container(id, None)).await {
            Ok(Ok(())) => {}
            // 304: already started.
            Ok(Err(DockerError::DockerResponseServerError { status_code: 304, .. })) => {}
            Ok(Err(e)) => {
                return Err(StepError::Failed(format!(
                    "docker: starting the container {id}: {}",
                    describe(&e)
                )))
            }
            Err(_) => {
                return Err(StepError::Failed(format!(
                    "docker: starting the container {id}: no answer from the engine within {CALL_TIMEOUT:?}"
                )))
            }
        }
        self.inspect(id).await
    }

    /// Stops the container `id`, killing it after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), StepError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        match tokio::time::timeout(grace + CALL_TIMEOUT, self.docker.stop_container(id, Some(options))).await {
            Ok(Ok(())) => Ok(()),
            // 304: already stopped; 404: gone.
            Ok(Err(DockerError::DockerResponseServerError {
                status_code: 304 | 404, ..
            })) => Ok(()),
            Ok(Err(e)) => Err(StepError::Failed(format!(
                "docker: stopping the container {id}: {}",
                describe(&e)
            ))),
            Err(_) => Err(StepError::Failed(format!(
                "docker: stopping the container {id}: no answer from the engine within {:?}",
                grace + CALL_TIMEOUT
            ))),
        }
    }

    /// Removes the container `id`, running or not; one that is not there
    /// is already removed.
    pub async fn remove(&self, id: &str) -> Result<(), StepError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match tokio::time::timeout(CALL_TIMEOUT, self.docker.remove_container(id, Some(options))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if not_found(&e) => Ok(()),
            // 409: its removal is already in progress.
            Ok(Err(DockerError::DockerResponseServerError {
                status_code: 409,
                message,
            })) if message.contains("in progress") => Ok(()),
            Ok(Err(e)) => Err(StepError::Failed(format!(
                "docker: removing the container {id}: {}",
                describe(&e)
            ))),
            Err(_) => Err(StepError::Failed(format!(
                "docker: removing the container {id}: no answer from the engine within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    /// The container `id` as it is now.
    pub async fn inspect(&self, id: &str) -> Result<Container, StepError> {
        let c = within(
            format!("inspecting the container {id}"),
            CALL_TIMEOUT,
            self.docker.inspect_container(id, None),
        )
        .await?;
        Ok(container_of(c, None))
    }

    /// The last `lines` lines of the container's output (stdout and stderr).
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, StepError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let collect = async {
            let mut stream = self.docker.logs(id, Some(options));
            let mut text = String::new();
            while let Some(item) = stream.next().await {
                text.push_str(&item?.to_string());
            }
            Ok::<_, DockerError>(text)
        };
        Ok(within(format!("reading the log of the container {id}"), CALL_TIMEOUT, collect).await?)
    }

    /// Streams the container's output into `log` (all of it, or what it
    /// wrote since the Unix time `since`), each line prefixed with
    /// `prefix`, until the container stops or the returned task is aborted
    /// (the step that watches it ends).
    pub fn follow_logs(
        &self,
        id: &str,
        prefix: String,
        since: Option<i64>,
        log: LogSink,
    ) -> tokio::task::JoinHandle<()> {
        let docker = self.docker.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let mut options = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(true);
            if let Some(since) = since.and_then(|s| i32::try_from(s).ok()) {
                options = options.since(since);
            }
            let options = options.build();
            let mut stream = docker.logs(&id, Some(options));
            let mut partial = String::new();
            while let Some(Ok(item)) = stream.next().await {
                partial.push_str(&item.to_string());
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    log.line(format!("{prefix}{}", line.trim_end()));
                }
            }
            if !partial.is_empty() {
                log.line(format!("{prefix}{}", partial.trim_end()));
            }
        })
    }
}

/// A directory as a build context: a tar of its files.
pub fn context_of_dir(dir: &Path) -> Result<Vec<u8>, String> {
    if !dir.join("Dockerfile").is_file() {
        return Err(format!("{} has no Dockerfile", dir.display()));
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .map_err(|e| format!("cannot pack {} as a build context: {e}", dir.display()))?;
    builder
        .into_inner()
        .map_err(|e| format!("cannot pack {} as a build context: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_holds_the_directory_and_needs_a_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        assert!(context_of_dir(dir.path()).unwrap_err().ends_with("has no Dockerfile"));
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/app"), "x").unwrap();
        let tar = context_of_dir(dir.path()).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.iter().any(|n| n.ends_with("Dockerfile")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with("bin/app")), "{names:?}");
    }

    #[tokio::test]
    async fn an_absent_engine_fails_at_once_saying_where() {
        let host = "unix:///nonexistent/opsd-test-docker.sock".to_string();
        let e = Engine::connect_to(host)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("cannot reach the Docker engine at unix:///nonexistent/opsd-test-docker.sock: "),
            "{e}"
        );
        let e = Engine::connect_to("gopher://x".into())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("cannot reach the Docker engine at gopher://x: "), "{e}");
    }
}
