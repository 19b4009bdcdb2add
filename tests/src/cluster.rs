//! A cluster of real opsd processes in one temp dir: formed the way an
//! operator forms one (bootstrap one node, join the rest through it), then
//! observed only through the client API.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsd_proto::v1::{GetResponse, ListResponse, PutResponse, StatusResponse};
use tempfile::TempDir;
use tonic::Status;

use crate::client;
use crate::node::{Node, NodeConfig};

/// How long forming a cluster, joining a node or electing a leader may take
/// before a test fails. Generous: a loaded 2-core CI machine running debug
/// builds is slow, and these waits are about behaviour, not speed.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// opsd's tuning flags for every node of a cluster. `None` keeps the daemon's
/// default, which is what the tests use unless a scenario needs otherwise
/// (the defaults are what operators run, so that is what we prove).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--heartbeat-ms` (daemon default 50).
    pub heartbeat_ms: Option<u64>,
    /// `--election-timeout-ms`, the minimum election timeout (daemon default 150; the maximum is 1.5 times it).
    pub election_timeout_ms: Option<u64>,
    /// `--snapshot-threshold` (daemon default 10000).
    pub snapshot_threshold: Option<u64>,
    /// `--max-voters` (daemon default 5).
    pub max_voters: Option<usize>,
    /// `--write-timeout-ms` (daemon default 5000).
    pub write_timeout_ms: Option<u64>,
    /// `--join-timeout-ms` (daemon default 60000).
    pub join_timeout_ms: Option<u64>,
    /// Further arguments, appended as given.
    pub extra_args: Vec<String>,
    /// `--lb-host` of each node by index: node `i` gets `lb_hosts[i]`, and
    /// nodes beyond the list keep the daemon's default (their `--listen` host).
    pub lb_hosts: Vec<std::net::IpAddr>,
}

impl Options {
    /// The flags these options stand for.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut flag = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                args.push(format!("--{name}"));
                args.push(v);
            }
        };
        flag("heartbeat-ms", self.heartbeat_ms.map(|v| v.to_string()));
        flag("election-timeout-ms", self.election_timeout_ms.map(|v| v.to_string()));
        flag("snapshot-threshold", self.snapshot_threshold.map(|v| v.to_string()));
        flag("max-voters", self.max_voters.map(|v| v.to_string()));
        flag("write-timeout-ms", self.write_timeout_ms.map(|v| v.to_string()));
        flag("join-timeout-ms", self.join_timeout_ms.map(|v| v.to_string()));
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The voter limit in effect (`--max-voters` or the daemon's default, 5).
    pub fn voter_limit(&self) -> usize {
        self.max_voters.unwrap_or(5)
    }

    /// The longest election timeout in effect (1.5 times the minimum), for
    /// tests that must wait "past the election timeout".
    pub fn max_election_timeout(&self) -> Duration {
        Duration::from_millis(3 * self.election_timeout_ms.unwrap_or(150) / 2)
    }
}

/// A cluster of opsd processes. Nodes are addressed by index (0-based, in the
/// order they were added; node `i` is named `n{i+1}`) and stay in the list when
/// killed, paused or removed, so indexes never shift.
///
/// Dropping the cluster kills every process. If the test is failing (the thread
/// is panicking) it prints the tail of every node's log and keeps the temp dir
/// (data dirs and full logs), printing its path; set `OPSD_TEST_KEEP=1` to keep
/// it always.
pub struct Cluster {
    nodes: Vec<Node>,
    options: Options,
    dir: Option<TempDir>,
    placement: Option<Placement>,
}

/// Adjusts each new node's config before it starts (see [`Cluster::set_placement`]).
type Placement = Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;

impl Cluster {
    /// A cluster with no nodes yet, in a fresh temp dir; add nodes with
    /// [`Cluster::spawn`] or [`Cluster::add_node`].
    pub fn empty(options: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("opsd-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for the cluster: {e}"));
        Cluster {
            nodes: Vec::new(),
            options,
            dir: Some(dir),
            placement: None,
        }
    }

    /// Makes every node added from now on go through `place` before it
    /// starts, so that a scenario can decide where a node runs: on another
    /// address, or under a command prefix such as a network namespace (see
    /// [`NodeConfig::command_prefix`]). Nodes already started keep their config.
    pub fn set_placement(&mut self, place: impl Fn(&mut NodeConfig) + Send + Sync + 'static) {
        self.placement = Some(Arc::new(place));
    }

    /// Forms an `n`-node cluster as an operator would: bootstraps `n1`, then
    /// joins the others one at a time through the running members, each once
    /// the previous one is in. Returns when every node reports the same leader
    /// and all `n` members (voters up to the voter limit, learners beyond it).
    pub async fn start(n: usize, options: Options) -> Cluster {
        Cluster::form(Cluster::empty(options), n).await
    }

    /// [`Cluster::start`], with every node placed by `place` first (see
    /// [`Cluster::set_placement`]): for clusters whose nodes run elsewhere
    /// than on loopback, such as each in its own network namespace.
    pub async fn start_placed(
        n: usize,
        options: Options,
        place: impl Fn(&mut NodeConfig) + Send + Sync + 'static,
    ) -> Cluster {
        let mut cluster = Cluster::empty(options);
        cluster.set_placement(place);
        Cluster::form(cluster, n).await
    }

    async fn form(mut cluster: Cluster, n: usize) -> Cluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let started = Instant::now();
        let config = cluster.node_config();
        let first = cluster.spawn(config);
        cluster.nodes[first].wait_ready(FORM_TIMEOUT).await;
        for _ in 1..n {
            cluster.add_node().await;
        }
        let voters = n.min(cluster.options.voter_limit());
        cluster.wait_membership(&[], voters, n - voters, FORM_TIMEOUT).await;
        eprintln!("[harness] {n}-node cluster formed in {:?}", started.elapsed());
        cluster
    }

    /// The temp dir holding every node's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new("."))
    }

    /// The options every node of this cluster is started with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Node `i` (0-based). Panics if there is none.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("no node {i}: the cluster has {}", self.nodes.len()))
    }

    /// Every node ever added, in order, whether running or not.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// How many nodes were added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if no node was added yet.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The index of the node with this node id, if it is one of ours.
    pub fn index_of(&self, node_id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == node_id && node_id != 0)
    }

    /// Indexes of the nodes that can answer now (running, not paused).
    pub fn serving(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_serving()).collect()
    }

    /// Every node's client address, by index.
    pub fn client_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr()).collect()
    }

    /// A config for the next node (`n{len+1}`), with fresh addresses, the
    /// cluster's options and `--join` set to every serving node's client
    /// address (empty for the first node, which then bootstraps), then
    /// placed as [`Cluster::set_placement`] says, if it was called.
    pub fn node_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(&format!("n{}", self.nodes.len() + 1), self.dir(), self.options.clone());
        config.join = self.serving().iter().map(|&i| self.nodes[i].client_addr()).collect();
        config.lb_host = self.options.lb_hosts.get(self.nodes.len()).copied();
        if let Some(place) = &self.placement {
            place(&mut config);
        }
        config
    }

    /// Starts a node with `config` and adds it to the cluster; returns its
    /// index. Does not wait for anything.
    pub fn spawn(&mut self, config: NodeConfig) -> usize {
        self.nodes.push(Node::spawn(config));
        self.nodes.len() - 1
    }

    /// Starts a new node that joins through the serving members and waits
    /// until the leader lists it: as a voter if the cluster had fewer voters
    /// than the limit (so it has caught up), else as a learner. Returns its index.
    pub async fn add_node(&mut self) -> usize {
        let started = Instant::now();
        let voters_before = match self.serving().first() {
            Some(&i) => self.nodes[i]
                .status()
                .await
                .map(|s| s.members.iter().filter(|m| m.voter).count())
                .unwrap_or(0),
            None => panic!("add_node: no serving node to join through"),
        };
        let expect_voter = voters_before < self.options.voter_limit();
        let config = self.node_config();
        let i = self.spawn(config);
        let id = self.nodes[i].wait_ready(FORM_TIMEOUT).await.node_id;
        loop {
            let leader = self.wait_for_leader(&[i], FORM_TIMEOUT).await;
            let last = match self.nodes[leader].status().await {
                Ok(s) => match s.members.iter().find(|m| m.id == id) {
                    Some(m) if m.voter || !expect_voter => break,
                    Some(_) => "listed as a learner, not yet promoted".to_string(),
                    None => format!("not listed; members {:?}", s.members),
                },
                Err(e) => client::describe(&e),
            };
            if started.elapsed() > FORM_TIMEOUT {
                panic!(
                    "{} did not become a {} within {FORM_TIMEOUT:?}: {last}",
                    self.nodes[i].name(),
                    if expect_voter { "voter" } else { "member" }
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "[harness] {} (id {id}) joined as a {} in {:?}",
            self.nodes[i].name(),
            if expect_voter { "voter" } else { "learner" },
            started.elapsed()
        );
        i
    }

    /// The statuses of the serving nodes not in `excluding` (index, status or error).
    pub async fn statuses(&self, excluding: &[usize]) -> Vec<(usize, Result<StatusResponse, Status>)> {
        let mut out = Vec::new();
        for i in self.serving() {
            if !excluding.contains(&i) {
                out.push((i, self.nodes[i].status().await));
            }
        }
        out
    }

    /// One look: the leader's index if every serving node outside `excluding`
    /// answers and names the same leader, that leader is among them and says
    /// it leads, and all are in the same term. Otherwise why not.
    pub async fn agreed_leader(&self, excluding: &[usize]) -> Result<usize, String> {
        let statuses = self.statuses(excluding).await;
        if statuses.is_empty() {
            return Err("no serving node to ask".into());
        }
        let mut views = Vec::new();
        for (i, s) in &statuses {
            match s {
                Ok(s) => views.push((*i, s.leader_id, s.term, s.role.clone())),
                Err(e) => {
                    return Err(format!(
                        "{} does not answer: {}",
                        self.nodes[*i].name(),
                        client::describe(e)
                    ))
                }
            }
        }
        let describe = || {
            views
                .iter()
                .map(|(i, l, t, r)| format!("{}: {r}, leader {l}, term {t}", self.nodes[*i].name()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let (_, leader_id, term, _) = views[0].clone();
        if leader_id == 0 || views.iter().any(|v| v.1 != leader_id || v.2 != term) {
            return Err(describe());
        }
        match self.index_of(leader_id) {
            Some(l) if views.iter().any(|v| v.0 == l && v.3 == "leader") => Ok(l),
            _ => Err(describe()),
        }
    }

    /// Waits until the serving nodes outside `excluding` agree on a leader
    /// among them (see [`Cluster::agreed_leader`]); returns its index. Panics
    /// with the nodes' views if that does not happen within `timeout`. Killed
    /// and paused nodes are left out by themselves; exclude nodes that run but
    /// are not members (removed ones).
    pub async fn wait_for_leader(&self, excluding: &[usize], timeout: Duration) -> usize {
        let started = Instant::now();
        loop {
            match self.agreed_leader(excluding).await {
                Ok(l) => return l,
                Err(why) if started.elapsed() > timeout => {
                    panic!("no agreed leader within {timeout:?}; last views: {why}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The leader's index, once the serving nodes agree on one (waits up to [`FORM_TIMEOUT`]).
    pub async fn leader(&self) -> usize {
        self.wait_for_leader(&[], FORM_TIMEOUT).await
    }

    /// The serving nodes other than the agreed leader.
    pub async fn followers(&self) -> Vec<usize> {
        let leader = self.leader().await;
        self.serving().into_iter().filter(|&i| i != leader).collect()
    }

    /// Waits until every serving node outside `excluding` agrees on a leader
    /// and reports exactly `voters` voters and `learners` learners. Panics
    /// with the last views after `timeout`.
    pub async fn wait_membership(&self, excluding: &[usize], voters: usize, learners: usize, timeout: Duration) {
        let started = Instant::now();
        loop {
            let mut why = self.agreed_leader(excluding).await.err();
            if why.is_none() {
                for (i, s) in self.statuses(excluding).await {
                    match s {
                        Ok(s) => {
                            let v = s.members.iter().filter(|m| m.voter).count();
                            let l = s.members.len() - v;
                            if (v, l) != (voters, learners) {
                                why = Some(format!(
                                    "{} sees {v} voters and {l} learners: {:?}",
                                    self.nodes[i].name(),
                                    s.members
                                ));
                                break;
                            }
                        }
                        Err(e) => {
                            why = Some(client::describe(&e));
                            break;
                        }
                    }
                }
            }
            match why {
                None => return,
                Some(why) if started.elapsed() > timeout => {
                    panic!("membership is not {voters} voters + {learners} learners after {timeout:?}: {why}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until node `i` has applied everything the leader had applied when
    /// this was called; returns how long that took.
    pub async fn wait_caught_up(&self, i: usize, timeout: Duration) -> Duration {
        let leader = self.leader().await;
        let target = self.nodes[leader]
            .status()
            .await
            .unwrap_or_else(|e| panic!("leader status: {}", client::describe(&e)))
            .applied_index;
        self.nodes[i].wait_applied(target, timeout).await
    }

    /// `Settings.Put` through node `i`, retried while UNAVAILABLE (see [`client::put`]).
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<PutResponse, Status> {
        client::put(&self.node(i).client_addr(), key, value).await
    }

    /// `Settings.Get` through node `i`, retried while UNAVAILABLE (see [`client::get`]).
    pub async fn get(&self, i: usize, key: &str, stale: bool) -> Result<GetResponse, Status> {
        client::get(&self.node(i).client_addr(), key, stale).await
    }

    /// `Settings.List` through node `i`, retried while UNAVAILABLE (see [`client::list`]).
    pub async fn list(&self, i: usize, prefix: &str, stale: bool) -> Result<ListResponse, Status> {
        client::list(&self.node(i).client_addr(), prefix, stale).await
    }

    /// Asserts that every acknowledged write `(key, value, revision)` under
    /// `prefix` is present and unchanged on each of `nodes`: in the node's own
    /// state once its store has reached the highest revision (a stale list),
    /// and through a linearizable list. The one check every "nothing
    /// acknowledged is lost" scenario ends with.
    pub async fn assert_writes_present(&self, nodes: &[usize], prefix: &str, acked: &[(String, String, u64)]) {
        let Some(max_revision) = acked.iter().map(|a| a.2).max() else {
            return;
        };
        for &i in nodes {
            let node = self.node(i);
            // Revisions count settings changes: wait until this node's store
            // has seen the highest one acknowledged.
            crate::wait_until(
                &format!("{} to reach settings revision {max_revision}", node.name()),
                Duration::from_secs(30),
                Duration::from_millis(50),
                || async {
                    let r = self.list(i, prefix, true).await.map_err(|e| e.to_string())?.revision;
                    (r >= max_revision).then_some(()).ok_or(format!("at revision {r}"))
                },
            )
            .await;
            for stale in [true, false] {
                let how = format!(
                    "{} list on {}",
                    if stale { "stale" } else { "linearizable" },
                    node.name()
                );
                let listed = self
                    .list(i, prefix, stale)
                    .await
                    .unwrap_or_else(|e| panic!("{how}: {e}"));
                let by_key: HashMap<&str, (&str, u64)> = listed
                    .settings
                    .iter()
                    .map(|s| (s.key.as_str(), (s.value.as_str(), s.mod_revision)))
                    .collect();
                let wrong: Vec<String> = acked
                    .iter()
                    .filter(|(k, v, rev)| by_key.get(k.as_str()) != Some(&(v.as_str(), *rev)))
                    .map(|(k, _, rev)| format!("{k}@{rev} -> {:?}", by_key.get(k.as_str())))
                    .collect();
                assert!(
                    wrong.is_empty(),
                    "{how}: {} of {} acknowledged writes are missing or changed, e.g. {:?}",
                    wrong.len(),
                    acked.len(),
                    &wrong[..wrong.len().min(10)]
                );
            }
        }
    }

    /// Prints the tail of every node's log to stderr.
    pub fn print_logs(&self, lines: usize) {
        for n in &self.nodes {
            n.print_log_tail(lines);
        }
    }
}

/// Machines of local clusters are detached processes that outlive opsd (by
/// design): kills every process working in a directory under `root` (each
/// machine runs in its own copy of its image there), so that no machine
/// outlives the test that made it, passed or failed.
pub fn kill_machines_under(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    if !root.is_absolute() {
        return;
    }
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(root)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            eprintln!(
                "[harness] the test failed; the tails of the logs of its {} nodes follow",
                self.nodes.len()
            );
        }
        // Each node kills its process, and prints its log tail when failing.
        self.nodes.clear();
        if let Some(dir) = &self.dir {
            kill_machines_under(dir.path());
        }
        if failing || std::env::var_os("OPSD_TEST_KEEP").is_some_and(|v| v != "0") {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "[harness] kept the nodes' data dirs and full logs in {}",
                    dir.keep().display()
                );
            }
        }
    }
}
