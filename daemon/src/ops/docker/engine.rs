//! The Docker engine as the Docker provider (and opsd's self-deploy) use it:
//! a thin layer over `bollard`, the Docker engine API client, with
//! bollard-free types and errors that say what failed and where. No
//! shelling out to the `docker` CLI.
//!
//! Everything opsd makes carries labels ([`LABEL_RESOURCE`], [`LABEL_RUN`],
//! [`LABEL_INDEX`]), so a step that runs again after a takeover finds what
//! an earlier attempt made instead of making twins, and nothing opsd made is
//! unlisted.

use std::collections::BTreeMap;
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
        todo!()
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
        let _ = (tag, context, labels, log, cancel, &self.docker);
        todo!()
    }

    /// Removes the image `tag`; one that is not there is already removed.
    pub async fn remove_image(&self, tag: &str) -> Result<(), StepError> {
        let _ = tag;
        todo!()
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

    /// Every container (running or not) carrying all of `labels`.
    pub async fn containers(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>, StepError> {
        let _ = labels;
        todo!()
    }

    /// Creates the container `spec.name` unless one of that name exists,
    /// and starts it unless it runs; returns it as inspected after start.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<Container, StepError> {
        let _ = spec;
        todo!()
    }

    /// Starts the container `id` (a running one is left alone).
    pub async fn start(&self, id: &str) -> Result<Container, StepError> {
        let _ = id;
        todo!()
    }

    /// Stops the container `id`, killing it after `grace`.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), StepError> {
        let _ = (id, grace);
        todo!()
    }

    /// Removes the container `id`, running or not; one that is not there
    /// is already removed.
    pub async fn remove(&self, id: &str) -> Result<(), StepError> {
        let _ = id;
        todo!()
    }

    /// The container `id` as it is now.
    pub async fn inspect(&self, id: &str) -> Result<Container, StepError> {
        let _ = id;
        todo!()
    }

    /// The last `lines` lines of the container's output (stdout and stderr).
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, StepError> {
        let _ = (id, lines);
        todo!()
    }
}

/// A directory as a build context: a tar of its files.
pub fn context_of_dir(dir: &Path) -> Result<Vec<u8>, String> {
    let _ = dir;
    todo!()
}
