//! opsd deploying itself (the built-in `opsd-cluster` kind,
//! docs/providers.md): the parts no provider owns. What an opsd node's
//! machine image holds (this very binary, the shared libraries it links and
//! the dynamic loader, read from the running process, so the image is the
//! build that runs), how a new node is started (its flags), and the
//! membership changes that hand the cluster to the new nodes, made through
//! this node's [`ClusterNode`] like `opsd --join` and `opsctl members`.
//!
//! A provider (the docker one, `ops::docker::opsd_nodes`) only makes the
//! machines: it starts each with [`node_args`], then calls
//! [`wait_for_voters`], [`adopt`] and [`leave`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use opsd_cluster::ClusterNode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{LogSink, Object, StepError};

/// The client port of every opsd node an opsd-cluster starts (opsd's default).
pub const CLIENT_PORT: u16 = 7700;
/// The peer port of every such node (opsd's default).
pub const PEER_PORT: u16 = 7701;
/// Where a node keeps its data inside its machine.
pub const DATA_DIR: &str = "/data";
/// Where the opsd binary is in a node's image.
pub const OPSD_PATH: &str = "/usr/local/bin/opsd";
/// The most nodes an opsd-cluster has: opsd promotes learners to voters up
/// to `--max-voters` (5 by default), and adopt needs every node a voter.
pub const MAX_NODES: usize = 5;
/// The first default host of a node when this node advertises a loopback
/// address: node i gets 127.0.100.(i+1).
const DEFAULT_FIRST_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 100, 1);
/// How often membership is polled while waiting.
const POLL: Duration = Duration::from_millis(500);

/// An opsd-cluster's spec, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesSpec {
    /// One host per node: node i listens on `hosts[i]` at [`CLIENT_PORT`]
    /// and [`PEER_PORT`], and its load balancer on `hosts[i]`.
    pub hosts: Vec<IpAddr>,
}

impl NodesSpec {
    /// Node i's client address, `HOST:PORT`, as it advertises it.
    pub fn client_addr(&self, i: usize) -> String {
        SocketAddr::new(self.hosts[i], CLIENT_PORT).to_string()
    }

    /// Every node's client address, in order.
    pub fn client_addrs(&self) -> Vec<String> {
        (0..self.hosts.len()).map(|i| self.client_addr(i)).collect()
    }
}

/// Checks an opsd-cluster's spec (`size`, `hosts`) for nodes started from a
/// node advertised at `advertise`; the error names the field. Without
/// `hosts`, a loopback `advertise` gives 127.0.100.1, 127.0.100.2, ...;
/// another one needs `hosts`: the nodes share the Docker host's network,
/// where only the operator knows which addresses are free.
pub fn nodes_spec(spec: &Object, advertise: &str) -> Result<NodesSpec, String> {
    let size = match spec.get("size") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        None => return Err("spec.size: missing: the number of opsd nodes".into()),
        _ => None,
    };
    let size = match size {
        Some(n) if (1..=MAX_NODES as u64).contains(&n) => n as usize,
        _ => {
            return Err(format!(
                "spec.size: must be a whole number from 1 to {MAX_NODES} (opsd promotes at most --max-voters, 5 by \
                 default, to voters), not {}",
                spec.get("size").map(Value::to_string).unwrap_or_default()
            ))
        }
    };
    let hosts = match spec.get("hosts") {
        None | Some(Value::Null) => {
            let loopback = match advertise.parse::<IpAddr>() {
                Ok(ip) => ip.is_loopback(),
                Err(_) => advertise.eq_ignore_ascii_case("localhost"),
            };
            if !loopback {
                return Err(format!(
                    "spec.hosts: missing: this node is advertised at {advertise}, not a loopback address; give one \
                     address of the Docker host per node (the nodes use the host's network, at ports \
                     {CLIENT_PORT} and {PEER_PORT})"
                ));
            }
            let first = u32::from(DEFAULT_FIRST_HOST);
            (0..size as u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
                .collect()
        }
        Some(Value::Array(items)) => {
            let mut hosts = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ip = item
                    .as_str()
                    .and_then(|s| s.trim().parse::<IpAddr>().ok())
                    .ok_or_else(|| format!("spec.hosts[{i}]: must be an IP address, not {item}"))?;
                if ip.is_unspecified() {
                    return Err(format!(
                        "spec.hosts[{i}]: {ip} is no address a node can be reached at; give one of the Docker host's"
                    ));
                }
                if hosts.contains(&ip) {
                    return Err(format!(
                        "spec.hosts[{i}]: {ip} is given twice; each node needs its own address"
                    ));
                }
                hosts.push(ip);
            }
            if hosts.len() != size {
                return Err(format!(
                    "spec.hosts: {} addresses for {size} nodes; give one per node",
                    hosts.len()
                ));
            }
            hosts
        }
        Some(v) => return Err(format!("spec.hosts: must be an array of IP addresses, not {v}")),
    };
    Ok(NodesSpec { hosts })
}

/// The flags of a new node at `host` that joins through `join` (client
/// addresses of members; a restarted node with data ignores them, or uses
/// the first that answers to check it is of the same cluster).
pub fn node_args(host: IpAddr, join: &[String]) -> Vec<String> {
    let mut args = vec![
        "--data-dir".to_string(),
        DATA_DIR.to_string(),
        "--listen".to_string(),
        SocketAddr::new(host, CLIENT_PORT).to_string(),
        "--peer-listen".to_string(),
        SocketAddr::new(host, PEER_PORT).to_string(),
        "--lb-host".to_string(),
        host.to_string(),
    ];
    if !join.is_empty() {
        args.push("--join".to_string());
        args.push(join.join(","));
    }
    args
}

/// The environment variable a new node's join token is given in.
pub const JOIN_TOKEN_ENV: &str = "OPSD_JOIN_TOKEN";

/// A join token for one new node, made through this node (the new node
/// gets its certificate with it); `None` for a cluster without a CA (made
/// before TLS), whose nodes join without one.
pub async fn join_token(node: &ClusterNode) -> Result<Option<String>, String> {
    let has_ca = {
        let view = node.reader().view();
        crate::domain::pki::read_ca(&view)
            .map_err(|e| format!("reading the cluster CA: {e}"))?
            .is_some()
    };
    if !has_ca {
        return Ok(None);
    }
    let ttl = crate::api::cluster::DEFAULT_JOIN_TOKEN_TTL;
    crate::api::cluster::mint_join_token(node, ttl, "opsd-cluster")
        .await
        .map(|(token, _)| Some(token.to_string()))
        .map_err(|s| format!("making a join token: {}", s.message()))
}

/// The client addresses a new node joins through: every member's, then the
/// other new nodes' (so a node restarted after the first members left
/// still finds its cluster).
pub fn join_addrs(node: &ClusterNode, nodes: &NodesSpec) -> Vec<String> {
    let mut addrs: Vec<String> = node.members().into_iter().map(|m| m.info.addr).collect();
    for addr in nodes.client_addrs() {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs
}

/// A file of a node's image: where it goes, and where its bytes are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Its path in the image (absolute).
    pub path: PathBuf,
    /// The file its bytes come from, on this machine.
    pub source: PathBuf,
    /// Its mode bits.
    pub mode: u32,
}

/// The files of an opsd node's image, taken from this running process:
/// the binary (`/proc/self/exe`), each shared library it links at the path
/// the dynamic loader finds it (what `ldd` prints: the loader itself is
/// asked, so this works inside such an image too), the loader at the path
/// the binary names (its ELF interpreter), and `/bin/sh` with its libraries
/// when this machine has one (exec kinds run their scripts with it on the
/// leader).
pub fn image_files() -> Result<Vec<ImageFile>, String> {
    // The loader opens the binary it lists: /proc/self/exe would be the
    // loader itself there, so this process's exe is named by its pid.
    let exe = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    let loader = running_loader()?;
    let mut files = vec![ImageFile {
        path: OPSD_PATH.into(),
        source: exe.clone(),
        mode: 0o755,
    }];
    let mut seen = BTreeSet::from([PathBuf::from(OPSD_PATH)]);
    let mut add_libraries = |binary: &Path, files: &mut Vec<ImageFile>| -> Result<(), String> {
        let mut needed = linked_libraries(&loader, binary)?;
        if let Some(interpreter) = elf_interpreter(binary)? {
            needed.push(interpreter);
        }
        for path in needed {
            if seen.insert(path.clone()) {
                let source = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                files.push(ImageFile {
                    path,
                    source,
                    mode: 0o755,
                });
            }
        }
        Ok(())
    };
    add_libraries(&exe, &mut files)?;
    let shell = Path::new("/bin/sh");
    if shell.exists() {
        add_libraries(shell, &mut files)?;
        files.push(ImageFile {
            path: shell.into(),
            source: std::fs::canonicalize(shell).map_err(|e| format!("/bin/sh: {e}"))?,
            mode: 0o755,
        });
    }
    Ok(files)
}

/// The dynamic loader this process runs under: the mapped file named
/// `ld-*.so*` in `/proc/self/maps`.
fn running_loader() -> Result<PathBuf, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ld-") && n.contains(".so"))
        })
        .ok_or_else(|| {
            "this opsd is linked statically (no dynamic loader in /proc/self/maps); its image needs no libraries, \
             but this build cannot make it"
                .to_string()
        })
}

/// The interpreter (dynamic loader) path an ELF binary names (`PT_INTERP`),
/// where the kernel looks for it: the loader must be at that path in the
/// image, whatever path this machine reaches it by. `None` for a static
/// binary. Reads 64-bit little-endian ELF, as opsd is built.
pub fn elf_interpreter(binary: &Path) -> Result<Option<PathBuf>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let what = |e: &dyn std::fmt::Display| format!("{}: reading its ELF header: {e}", binary.display());
    let mut f = std::fs::File::open(binary).map_err(|e| what(&e))?;
    let mut header = [0u8; 64];
    f.read_exact(&mut header).map_err(|e| what(&e))?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(what(&"not a 64-bit little-endian ELF file"));
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at = |b: &[u8], at: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(x)
    };
    let (phoff, phentsize, phnum) = (u64_at(&header, 0x20), u16_at(&header, 0x36), u16_at(&header, 0x38));
    if phentsize < 56 {
        return Err(what(&"program headers too small"));
    }
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    f.seek(SeekFrom::Start(phoff)).map_err(|e| what(&e))?;
    f.read_exact(&mut table).map_err(|e| what(&e))?;
    const PT_INTERP: u32 = 3;
    for ph in table.chunks(usize::from(phentsize)) {
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_INTERP {
            continue;
        }
        let (offset, size) = (u64_at(ph, 8), u64_at(ph, 32));
        if size > 4096 {
            return Err(what(&"interpreter path too long"));
        }
        let mut path = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset)).map_err(|e| what(&e))?;
        f.read_exact(&mut path).map_err(|e| what(&e))?;
        let end = path.iter().position(|b| *b == 0).unwrap_or(path.len());
        let path = String::from_utf8_lossy(&path[..end]).into_owned();
        return Ok(Some(PathBuf::from(path)));
    }
    Ok(None)
}

/// The libraries `binary` links, at the paths the loader finds them
/// (`LOADER --list BINARY`, which is what `ldd` runs).
fn linked_libraries(loader: &Path, binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = std::process::Command::new(loader)
        .arg("--list")
        .arg(binary)
        .output()
        .map_err(|e| {
            format!(
                "listing the libraries of {}: {}: {e}",
                binary.display(),
                loader.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "listing the libraries of {}: {} said: {}",
            binary.display(),
            loader.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_library_list(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| format!("listing the libraries of {}: {e}", binary.display()))
}

/// Reads the loader's (`ldd`'s) list: `NAME => PATH (ADDR)` lines give a
/// library's path; the loader's own line (a path without `=>`, as the
/// loader was invoked, not as binaries name it) and the vDSO are skipped.
/// A library the loader could not find is an error naming it.
pub fn parse_library_list(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((name, rest)) = line.split_once("=>") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with("not found") {
            return Err(format!("library {} not found", name.trim()));
        }
        let path = rest.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// A Docker build context for an opsd node image: a `Dockerfile` (`FROM
/// scratch`, the files copied in, opsd as the entrypoint) and `rootfs/`
/// holding `files`, plus an empty `/tmp`. Reads every file: run it off the
/// async threads.
pub fn image_context(files: &[ImageFile]) -> Result<Vec<u8>, String> {
    let dockerfile = format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"{OPSD_PATH}\"]\n");
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .map_err(|e| format!("writing the build context: {e}"))?;
    let mut tmp = tar::Header::new_gnu();
    tmp.set_entry_type(tar::EntryType::Directory);
    tmp.set_size(0);
    tmp.set_mode(0o1777);
    tmp.set_cksum();
    tar.append_data(&mut tmp, "rootfs/tmp/", std::io::empty())
        .map_err(|e| format!("writing the build context: {e}"))?;
    for file in files {
        let mut source = std::fs::File::open(&file.source).map_err(|e| format!("{}: {e}", file.source.display()))?;
        let len = source
            .metadata()
            .map_err(|e| format!("{}: {e}", file.source.display()))?
            .len();
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(file.mode);
        let inside = Path::new("rootfs").join(file.path.strip_prefix("/").unwrap_or(&file.path));
        tar.append_data(&mut header, &inside, &mut source)
            .map_err(|e| format!("adding {} to the build context: {e}", file.source.display()))?;
    }
    tar.into_inner().map_err(|e| format!("writing the build context: {e}"))
}

/// Waits until every node at `addrs` (client addresses) is a voter of the
/// cluster: opsd promotes a learner only once it has caught up with the
/// leader's log, so a voter holds every key written before. `check` runs
/// between polls and fails the wait when a node's machine died. Returns
/// each address's node id.
pub async fn wait_for_voters<F, Fut>(
    node: &ClusterNode,
    addrs: &[String],
    log: &LogSink,
    cancel: &CancellationToken,
    mut check: F,
) -> Result<BTreeMap<String, u64>, StepError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StepError>>,
{
    let mut reported = BTreeSet::new();
    loop {
        let members = node.members();
        let mut ids = BTreeMap::new();
        for addr in addrs {
            match members.iter().find(|m| &m.info.addr == addr) {
                Some(m) if m.voter => {
                    ids.insert(addr.clone(), m.id);
                    if reported.insert(addr.clone()) {
                        log.line(format!("node {} at {addr} is a voter (caught up)", m.id));
                    }
                }
                Some(m) if reported.insert(format!("learner {addr}")) => {
                    log.line(format!("node {} at {addr} joined as a learner; catching up", m.id));
                }
                _ => {}
            }
        }
        if ids.len() == addrs.len() {
            return Ok(ids);
        }
        check().await?;
        tokio::select! {
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// What [`adopt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    /// Every member left that is not a node at the given addresses: the
    /// cluster is theirs.
    Done {
        /// The ids of the members that left.
        left: Vec<u64>,
    },
    /// This node, which runs the step and is not one of the nodes, removed
    /// itself last; a node of the resource leads next and runs the step
    /// again, which then finds the cluster theirs.
    RemovedSelf,
}

/// Hands the cluster to the nodes at `addrs`: waits until each is a voter,
/// then removes every other member, this node (the leader running the
/// step) last. openraft keeps a leader that removed itself leading until the
/// change is committed and applied, and opsd then stops it for good (it is
/// marked removed); the remaining voters elect a leader among them, which
/// takes the run over. Idempotent: members already gone are not missed.
pub async fn adopt(
    node: &ClusterNode,
    addrs: &[String],
    log: &LogSink,
    cancel: &CancellationToken,
) -> Result<Adopted, StepError> {
    wait_for_voters(node, addrs, log, cancel, || async { Ok(()) }).await?;
    let me = node.node_id();
    let others: Vec<(u64, String)> = node
        .members()
        .into_iter()
        .filter(|m| !addrs.contains(&m.info.addr))
        .map(|m| (m.id, m.info.addr))
        .collect();
    let mut left = Vec::new();
    for (id, addr) in others.iter().filter(|(id, _)| *id != me) {
        if cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        log.line(format!("node {id} at {addr} leaves the cluster"));
        node.remove_node(*id)
            .await
            .map_err(|e| StepError::Failed(format!("removing node {id} at {addr}: {e}")))?;
        left.push(*id);
    }
    if others.iter().any(|(id, _)| *id == me) {
        if cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        log.line(format!(
            "node {me} (this one, running the step) leaves the cluster last; a node of the resource leads next and \
             finishes adopt"
        ));
        node.remove_node(me)
            .await
            .map_err(|e| StepError::Failed(format!("removing node {me} (this node): {e}")))?;
        return Ok(Adopted::RemovedSelf);
    }
    log.line(format!(
        "the cluster is the {} node(s) at {}",
        addrs.len(),
        addrs.join(", ")
    ));
    Ok(Adopted::Done { left })
}

/// Removes the nodes at `addrs` from the cluster (before their machines
/// are destroyed); refused when they hold every voter, since destroying
/// them would destroy the cluster itself. Returns the ids removed.
pub async fn leave(node: &ClusterNode, addrs: &[String], log: &LogSink) -> Result<Vec<u64>, StepError> {
    let members = node.members();
    let outside_voters = members
        .iter()
        .filter(|m| m.voter && !addrs.contains(&m.info.addr))
        .count();
    if outside_voters == 0 {
        return Err(StepError::Failed(format!(
            "the nodes at {} are the whole opsd cluster (it was adopted): destroying them would destroy the cluster \
             itself, so opsd refuses; stop their machines by hand if that is what you want",
            addrs.join(", ")
        )));
    }
    let mut removed = Vec::new();
    // This node last, if it is one of them: it leads, and stops once it left.
    let mut leaving: Vec<_> = members.iter().filter(|m| addrs.contains(&m.info.addr)).collect();
    leaving.sort_by_key(|m| m.id == node.node_id());
    for m in leaving {
        log.line(format!("node {} at {} leaves the cluster", m.id, m.info.addr));
        node.remove_node(m.id)
            .await
            .map_err(|e| StepError::Failed(format!("removing node {} at {}: {e}", m.id, m.info.addr)))?;
        removed.push(m.id);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Object {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_loopback_node_gives_its_nodes_default_loopback_hosts() {
        let s = nodes_spec(&spec(json!({"size": 3})), "127.0.0.1").unwrap();
        assert_eq!(
            s.client_addrs(),
            ["127.0.100.1:7700", "127.0.100.2:7700", "127.0.100.3:7700"]
        );
        let s = nodes_spec(&spec(json!({"size": "2"})), "localhost").unwrap();
        assert_eq!(s.hosts.len(), 2);
    }

    #[test]
    fn hosts_are_one_distinct_address_per_node() {
        let s = nodes_spec(&spec(json!({"size": 2, "hosts": ["10.0.0.7", "::1"]})), "10.0.0.5").unwrap();
        assert_eq!(s.client_addrs(), ["10.0.0.7:7700", "[::1]:7700"]);
        let e = nodes_spec(&spec(json!({"size": 2, "hosts": ["10.0.0.7"]})), "10.0.0.5").unwrap_err();
        assert_eq!(e, "spec.hosts: 1 addresses for 2 nodes; give one per node");
        let e = nodes_spec(&spec(json!({"size": 2, "hosts": ["10.0.0.7", "10.0.0.7"]})), "x").unwrap_err();
        assert!(e.starts_with("spec.hosts[1]: 10.0.0.7 is given twice"), "{e}");
        let e = nodes_spec(&spec(json!({"size": 1, "hosts": ["web"]})), "x").unwrap_err();
        assert!(e.starts_with("spec.hosts[0]: must be an IP address"), "{e}");
        let e = nodes_spec(&spec(json!({"size": 1, "hosts": ["0.0.0.0"]})), "x").unwrap_err();
        assert!(e.starts_with("spec.hosts[0]: 0.0.0.0 is no address"), "{e}");
        let e = nodes_spec(&spec(json!({"size": 1, "hosts": "10.0.0.7"})), "x").unwrap_err();
        assert!(e.starts_with("spec.hosts: must be an array"), "{e}");
    }

    #[test]
    fn a_node_on_a_real_address_needs_hosts() {
        let e = nodes_spec(&spec(json!({"size": 3})), "10.0.0.5").unwrap_err();
        assert!(
            e.starts_with("spec.hosts: missing: this node is advertised at 10.0.0.5"),
            "{e}"
        );
    }

    #[test]
    fn size_is_one_to_five() {
        for bad in [json!(0), json!(6), json!(-1), json!(2.5), json!("three"), json!(true)] {
            let e = nodes_spec(&spec(json!({ "size": bad })), "127.0.0.1").unwrap_err();
            assert!(e.starts_with("spec.size: must be a whole number from 1 to 5"), "{e}");
        }
        let e = nodes_spec(&Object::new(), "127.0.0.1").unwrap_err();
        assert!(e.starts_with("spec.size: missing"), "{e}");
    }

    #[test]
    fn a_node_listens_on_its_host_and_joins_through_the_members() {
        let args = node_args(
            "127.0.100.2".parse().unwrap(),
            &["127.0.0.1:7700".into(), "127.0.100.1:7700".into()],
        );
        assert_eq!(
            args.join(" "),
            "--data-dir /data --listen 127.0.100.2:7700 --peer-listen 127.0.100.2:7701 --lb-host 127.0.100.2 \
             --join 127.0.0.1:7700,127.0.100.1:7700"
        );
    }

    #[test]
    fn the_loader_list_gives_library_and_loader_paths() {
        let list = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 \
                    (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_library_list(list).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libstdc++.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            ]
        );
        let e = parse_library_list("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert_eq!(e, "library libfoo.so.1 not found");
    }

    #[test]
    fn this_process_gives_an_image_with_opsd_its_libraries_and_the_loader() {
        // The test binary is linked as opsd is: its files make an image.
        let files = image_files().unwrap();
        assert_eq!(files[0].path, PathBuf::from(OPSD_PATH));
        // The loader is where binaries name it, not where this process mapped it from.
        let interpreter = elf_interpreter(Path::new("/proc/self/exe")).unwrap().unwrap();
        assert!(
            files.iter().any(|f| f.path == interpreter),
            "{interpreter:?} not in {files:?}"
        );
        assert!(
            files.iter().any(|f| f.path.to_string_lossy().contains("libc.so")),
            "{files:?}"
        );
        assert!(
            files.iter().any(|f| f.path.to_string_lossy().contains("ld-linux")),
            "{files:?}"
        );
        // Linked by every Rust binary, not by /bin/sh: the binary's own libraries are there.
        assert!(
            files.iter().any(|f| f.path.to_string_lossy().contains("libgcc_s")),
            "{files:?}"
        );
        let small: Vec<ImageFile> = files.into_iter().skip(1).collect();
        let context = image_context(&small).unwrap();
        let mut archive = tar::Archive::new(&context[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "Dockerfile");
        assert!(
            names.iter().any(|n| n == "rootfs/tmp/" || n == "rootfs/tmp"),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.starts_with("rootfs/") && n.contains("libc.so")),
            "{names:?}"
        );
    }
}
