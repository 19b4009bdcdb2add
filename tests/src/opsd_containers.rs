//! opsd nodes in containers, for the scenarios whose fault is the
//! container's network: an image of the `opsd` binary under test (`FROM
//! scratch`, with the shared libraries it links: no registry needed), a
//! bridge network of the test's own, and one container per node, found by
//! its peers by container name. Everything is named after the test and this
//! process, and removed when the [`OpsdContainers`] drops, even when the
//! test fails.

use std::path::Path;

use crate::api::StatusResponse;
use crate::docker::{copy_into, docker, shared_libraries};

/// The client port of every node (each container has its own address).
pub const CLIENT_PORT: u16 = 7700;

/// A bridge network with opsd nodes on it, removed on drop.
pub struct OpsdContainers {
    /// Prefix of every name: the image tag, the network, the containers.
    prefix: String,
    /// The node containers' names, by index.
    names: Vec<String>,
    /// A copy of the bootstrap node's CA (and admin token, if it has one),
    /// registered for every node's address (see [`crate::access`]).
    access: tempfile::TempDir,
}

impl OpsdContainers {
    /// Builds the image, makes the network and starts `nodes` containers:
    /// the first bootstraps, the others join it.
    pub fn start(test: &str, nodes: usize) -> OpsdContainers {
        let prefix = format!("opsd-test-{}-{}", test.replace('_', "-"), std::process::id());
        let bed = OpsdContainers {
            names: (0..nodes).map(|i| format!("{prefix}-n{i}")).collect(),
            prefix,
            access: tempfile::Builder::new()
                .prefix("opsd-containers-access-")
                .tempdir()
                .unwrap_or_else(|e| panic!("a temporary directory: {e}")),
        };
        let context = image_context(&crate::opsd_bin());
        let context_path = context.path().display().to_string();
        docker(&["build", "--quiet", "--tag", &bed.image(), &context_path]).unwrap_or_else(|e| panic!("{e}"));
        docker(&["network", "create", &bed.prefix]).unwrap_or_else(|e| panic!("{e}"));
        for (i, name) in bed.names.iter().enumerate() {
            let mut args = vec![
                "run",
                "--detach",
                "--name",
                name,
                "--hostname",
                name,
                "--network",
                &bed.prefix,
            ];
            let image = bed.image();
            args.push(&image);
            let join = format!("{}:{CLIENT_PORT}", bed.names[0]);
            let listen = format!("0.0.0.0:{CLIENT_PORT}");
            let peer = format!("0.0.0.0:{}", CLIENT_PORT + 1);
            args.extend([
                "--data-dir",
                "/data",
                "--listen",
                &listen,
                "--peer-listen",
                &peer,
                "--advertise",
                name,
            ]);
            let token;
            if i > 0 {
                // A join token of the cluster, made through the first node.
                token = crate::access::join_token(&[bed.client_addr(0)])
                    .unwrap_or_else(|| panic!("no join token from {}", bed.names[0]));
                args.extend(["--join", &join, "--join-token", &token]);
            }
            docker(&args).unwrap_or_else(|e| panic!("{e}"));
            if i == 0 {
                bed.copy_access();
            }
        }
        bed
    }

    /// Copies the first node's CA (and admin token, if any) out of its
    /// container, once it has written them.
    fn copy_access(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let from = |file: &str| format!("{}:/data/{file}", self.names[0]);
        let to = |file: &str| self.access.path().join(file).display().to_string();
        while docker(&["cp", &from(crate::access::CA_FILE), &to(crate::access::CA_FILE)]).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} wrote no {} within 60 s",
                self.names[0],
                crate::access::CA_FILE
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = docker(&["cp", &from(crate::access::TOKEN_FILE), &to(crate::access::TOKEN_FILE)]);
    }

    /// The image's tag.
    fn image(&self) -> String {
        format!("{}:latest", self.prefix)
    }

    /// The client address of node `i` now (its container's address on the
    /// network, which may change when it is connected again).
    pub fn client_addr(&self, i: usize) -> String {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.prefix
        );
        let ip = docker(&["inspect", "--format", &format, &self.names[i]]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !ip.is_empty(),
            "node {i} ({}) has no address on {}",
            self.names[i],
            self.prefix
        );
        let addr = format!("{ip}:{CLIENT_PORT}");
        crate::access::register(&addr, self.access.path());
        addr
    }

    /// The index of the node with Raft id `id`, by the member address
    /// `status` gives it (its container's name).
    pub fn index_of(&self, status: &StatusResponse, id: u64) -> usize {
        let member = status
            .members
            .iter()
            .find(|m| m.id == id)
            .unwrap_or_else(|| panic!("no member {id} in {:?}", status.members));
        let host = member.addr.rsplit_once(':').map_or(member.addr.as_str(), |(h, _)| h);
        self.names
            .iter()
            .position(|n| n == host)
            .unwrap_or_else(|| panic!("member {id} at {} is none of {:?}", member.addr, self.names))
    }

    /// Takes node `i`'s container off the network.
    pub fn disconnect(&self, i: usize) {
        docker(&["network", "disconnect", &self.prefix, &self.names[i]]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Puts node `i`'s container back on the network.
    pub fn connect(&self, i: usize) {
        docker(&["network", "connect", &self.prefix, &self.names[i]]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for OpsdContainers {
    fn drop(&mut self) {
        for name in &self.names {
            if std::thread::panicking() {
                if let Ok(logs) = docker(&["logs", "--tail", "30", name]) {
                    eprintln!("== last lines of {name}:\n{logs}");
                }
            }
            let _ = docker(&["rm", "--force", "--volumes", name]);
        }
        let _ = docker(&["network", "rm", &self.prefix]);
        let _ = docker(&["image", "rm", "--force", &self.image()]);
    }
}

/// A build context for an image of `binary`: `FROM scratch`, the binary as
/// `/opsd` (the entrypoint), and the shared libraries `ldd` lists for it.
fn image_context(binary: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("opsd-node-image-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a build dir: {e}"));
    let root = dir.path().join("rootfs");
    copy_into(&root, binary, Path::new("/opsd"));
    for lib in shared_libraries(binary) {
        copy_into(&root, &lib, &lib);
    }
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/opsd\"]\n",
    )
    .unwrap_or_else(|e| panic!("writing the Dockerfile: {e}"));
    dir
}
