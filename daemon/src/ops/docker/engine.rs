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
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ops::{LogSink, StepError};

/// Label on every container, network and image opsd makes: `KIND/NAME` of
/// the resource it belongs to.
pub const LABEL_RESOURCE: &str = "opsd.resource";
/// Label: the run that made it.
pub const LABEL_RUN: &str = "opsd.run";
/// Label on a container: its machine index in the resource.
pub const LABEL_INDEX: &str = "opsd.index";

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

/// A connection to the Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: bollard::Docker,
}

impl Engine {
    /// Connects to the engine named by `DOCKER_HOST`, or the local socket,
    /// and checks within a few seconds that it answers; the error says where
    /// it tried and what it got.
    pub async fn connect() -> Result<Engine, StepError> {
        let at = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the local socket".to_string());
        let docker = bollard::Docker::connect_with_defaults()
            .map_err(|e| StepError::Failed(format!("Docker engine at {at}: cannot connect: {e}")))?;
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| StepError::Failed(format!("Docker engine at {at}: no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| StepError::Failed(format!("Docker engine at {at}: {e}")))?;
        tokio::time::timeout(CONNECT_TIMEOUT, docker.ping())
            .await
            .map_err(|_| StepError::Failed(format!("Docker engine at {at}: no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| StepError::Failed(format!("Docker engine at {at}: {e}")))?;
        Ok(Engine { docker })
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
        use futures::StreamExt;
        let labels: HashMap<String, String> = labels.clone().into_iter().collect();
        let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .build();
        let mut stream = self
            .docker
            .build_image(options, None, Some(bollard::body_full(context.into())));
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            let info = item.map_err(|e| StepError::Failed(format!("building image {tag}: {e}")))?;
            if let Some(detail) = info.error_detail {
                let message = detail.message.unwrap_or_else(|| "the build failed".into());
                return Err(StepError::Failed(format!("building image {tag}: {message}")));
            }
            if let Some(line) = info.stream {
                let line = line.trim_end();
                if !line.is_empty() {
                    log.line(line);
                }
            }
        }
        let image = self
            .docker
            .inspect_image(tag)
            .await
            .map_err(|e| StepError::Failed(format!("building image {tag}: the build ended without it: {e}")))?;
        Ok(image.id.unwrap_or_default())
    }

    /// Removes the image `tag`; one that is not there is already removed.
    pub async fn remove_image(&self, tag: &str) -> Result<(), StepError> {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(true)
            .build();
        match self.docker.remove_image(tag, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(StepError::Failed(format!("removing image {tag}: {e}"))),
        }
    }

    /// Creates the bridge network `name` with `labels` unless it exists.
    pub async fn ensure_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), StepError> {
        let _ = (name, labels);
        todo!()
    }

    /// Removes the network `name`; one that is not there is already removed.
    pub async fn remove_network(&self, name: &str) -> Result<(), StepError> {
        let _ = name;
        todo!()
    }

    /// Creates the named volume `name` with `labels` unless it exists (added
    /// for opsd's self-deploy: a node's data outlives its container).
    pub async fn ensure_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), StepError> {
        if self.docker.inspect_volume(name).await.is_ok() {
            return Ok(());
        }
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|e| StepError::Failed(format!("creating volume {name}: {e}")))
    }

    /// Removes the volume `name`; one that is not there is already removed.
    pub async fn remove_volume(&self, name: &str) -> Result<(), StepError> {
        let options = bollard::query_parameters::RemoveVolumeOptionsBuilder::default()
            .force(true)
            .build();
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(StepError::Failed(format!("removing volume {name}: {e}"))),
        }
    }

    /// The names of the volumes carrying all of `labels`.
    pub async fn volumes(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, StepError> {
        let filters = label_filters(labels);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let listed = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| StepError::Failed(format!("listing volumes: {e}")))?;
        Ok(listed.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect())
    }

    /// Every container (running or not) carrying all of `labels`.
    pub async fn containers(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>, StepError> {
        let filters = label_filters(labels);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| StepError::Failed(format!("listing containers: {e}")))?;
        let mut out = Vec::new();
        for summary in listed {
            let Some(id) = summary.id else { continue };
            match self.inspect(&id).await {
                Ok(c) => out.push(c),
                // Removed between the listing and now.
                Err(_) => continue,
            }
        }
        Ok(out)
    }

    /// Creates the container `spec.name` unless one of that name exists,
    /// and starts it unless it runs; returns it as inspected after start.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<Container, StepError> {
        let id = match self.inspect(&spec.name).await {
            Ok(existing) => existing.id,
            Err(_) => {
                let host_config = bollard::models::HostConfig {
                    binds: Some(spec.binds.clone()),
                    network_mode: Some(match &spec.network {
                        Network::Host => "host".to_string(),
                        Network::Bridge(name) => name.clone(),
                    }),
                    ..Default::default()
                };
                let body = bollard::models::ContainerCreateBody {
                    image: Some(spec.image.clone()),
                    cmd: spec.cmd.clone(),
                    env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    labels: Some(spec.labels.clone().into_iter().collect()),
                    host_config: Some(host_config),
                    ..Default::default()
                };
                let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
                    .name(&spec.name)
                    .build();
                self.docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(|e| StepError::Failed(format!("creating container {}: {e}", spec.name)))?
                    .id
            }
        };
        self.start(&id).await
    }

    /// Starts the container `id` (a running one is left alone).
    pub async fn start(&self, id: &str) -> Result<Container, StepError> {
        let now = self.inspect(id).await?;
        if now.running() {
            return Ok(now);
        }
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| StepError::Failed(format!("starting container {}: {e}", now.name)))?;
        self.inspect(id).await
    }

    /// Stops the container `id`, killing it after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), StepError> {
        let options = bollard::query_parameters::StopContainerOptionsBuilder::default()
            .t(grace.as_secs().try_into().unwrap_or(i32::MAX))
            .build();
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(StepError::Failed(format!("stopping container {id}: {e}"))),
        }
    }

    /// Removes the container `id`, running or not; one that is not there
    /// is already removed.
    pub async fn remove(&self, id: &str) -> Result<(), StepError> {
        let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
            .force(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(StepError::Failed(format!("removing container {id}: {e}"))),
        }
    }

    /// The container `id` as it is now.
    pub async fn inspect(&self, id: &str) -> Result<Container, StepError> {
        let c = self
            .docker
            .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
            .await
            .map_err(|e| StepError::Failed(format!("inspecting container {id}: {e}")))?;
        let state = c.state.unwrap_or_default();
        let ip = c.network_settings.and_then(|n| n.networks).and_then(|nets| {
            nets.into_values()
                .find_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))
        });
        Ok(Container {
            id: c.id.unwrap_or_default(),
            name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
            state: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code.filter(|_| state.running != Some(true)),
            labels: c
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ip,
        })
    }

    /// The last `lines` lines of the container's output (stdout and stderr).
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, StepError> {
        use futures::StreamExt;
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| StepError::Failed(format!("reading the logs of container {id}: {e}")))?;
            out.push_str(&item.to_string());
        }
        Ok(out)
    }
}

/// How long [`Engine::connect`] waits for the engine to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Label filters as the engine's list calls take them.
fn label_filters(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

/// Whether the engine answered that the thing is not there.
fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

/// A directory as a build context: a tar of its files.
pub fn context_of_dir(dir: &Path) -> Result<Vec<u8>, String> {
    let _ = dir;
    todo!()
}
