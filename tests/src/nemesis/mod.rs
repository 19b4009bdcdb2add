//! The fault suite ("nemesis"): real 3- and 5-node clusters take kill -9,
//! SIGSTOP, network partitions, membership churn and storage faults (a full
//! disk, failing writes, a lost database), alone and together, for a while, as clients write and drive runs; then everything heals and
//! the suite checks that nothing was lost or made up, that every key's
//! history is linearizable, that every run ended exactly once, and that all
//! nodes converged to the same state. `make nemesis` runs it for minutes
//! (the `opsd-nemesis` binary); `tests/nemesis_short.rs` runs it for seconds
//! inside `cargo test`. docs/nemesis.md is the operator's guide.
//!
//! A run is decided by its seed: the schedule of faults (which kind, which
//! node, how long) comes from it, and it is printed with the exact command
//! that replays it.

pub mod checker;
pub mod faults;
pub mod history;
pub mod net;
pub mod rng;
pub mod runs;
pub mod storage;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{ListRequest, ListResourcesRequest};
use crate::{client, Cluster, Options};
use faults::{Fault, Nemesis};
use history::{Call, History, Outcome, FINAL_CLIENT};
use net::Network;
use rng::Rng;
use storage::Storage;
use workload::{connect, Ctx, Targets, Workload};

/// How long the cluster may take, after everything healed, to agree on a
/// leader and membership, bring every run to rest, and converge.
const SETTLE: Duration = Duration::from_secs(90);

/// How a nemesis run is set up. [`Config::from_env`] reads the knobs an
/// operator turns; the rest are the suite's defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// Seconds of faults in all, shared equally by the cluster sizes.
    pub seconds: u64,
    /// The cluster sizes to run, one after the other.
    pub sizes: Vec<usize>,
    /// How long a fault is held: between these.
    pub hold: (Duration, Duration),
    /// How long the cluster is left alone between faults: between these.
    pub quiet: (Duration, Duration),
    /// Unique-key writers.
    pub writers: usize,
    /// Compare-and-set clients.
    pub cas_clients: usize,
    /// Shared keys the compare-and-set clients contend on.
    pub shared_keys: usize,
    /// Resources of the exec kind driven through runs.
    pub resources: usize,
    /// `--snapshot-threshold` of every node: low, so that snapshots are
    /// built, purged past and installed while the faults happen.
    pub snapshot_threshold: u64,
    /// Where the summary, histories and node logs go.
    pub out_dir: PathBuf,
    /// The command that runs this suite with this config's knobs but not its
    /// seed, for the replay line (`NEMESIS_SEED=N` is prepended).
    pub rerun: String,
    /// Bound on the linearizability search per key, in steps.
    pub search_budget: u64,
    /// Kinds of fault each cluster's first round deals before the others
    /// (those this machine can deal), so that a short run is sure to see them.
    pub first: Vec<Fault>,
}

pub use crate::{strict, target_dir};

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}={v:?} is not a whole number: {e}")),
        _ => Ok(None),
    }
}

impl Config {
    /// The suite's defaults for `seconds` of faults in all over `sizes`,
    /// with the fault timings scaled to the time each cluster gets.
    pub fn new(seed: u64, seconds: u64, sizes: Vec<usize>, out_dir: PathBuf, rerun: &str) -> Config {
        let per_cluster = seconds / sizes.len().max(1) as u64;
        let (hold, quiet) = if per_cluster < 60 {
            (
                (Duration::from_millis(800), Duration::from_millis(2500)),
                (Duration::from_millis(300), Duration::from_millis(1200)),
            )
        } else {
            (
                (Duration::from_millis(1500), Duration::from_millis(8000)),
                (Duration::from_millis(500), Duration::from_millis(4000)),
            )
        };
        Config {
            seed,
            seconds,
            sizes,
            hold,
            quiet,
            writers: 3,
            cas_clients: 4,
            shared_keys: 3,
            resources: 3,
            snapshot_threshold: 1000,
            out_dir,
            rerun: rerun.to_string(),
            search_budget: 20_000_000,
            first: Vec::new(),
        }
    }

    /// A config from the environment: `NEMESIS_SECONDS` (default
    /// `default_seconds`), `NEMESIS_SEED` (default: a fresh one) and
    /// `NEMESIS_NODES` (cluster sizes, default `3,5`). `rerun` is the command
    /// that runs the suite; the replay line adds these variables to it.
    pub fn from_env(default_seconds: u64, out_dir: PathBuf, rerun: &str) -> Result<Config, String> {
        let seconds = env_u64("NEMESIS_SECONDS")?.unwrap_or(default_seconds);
        let seed = env_u64("NEMESIS_SEED")?.unwrap_or_else(rng::fresh_seed);
        let sizes = match std::env::var("NEMESIS_NODES") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|s| match s.trim().parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(format!("NEMESIS_NODES={v:?}: {s:?} is not a cluster size (1 or more)")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![3, 5],
        };
        if seconds == 0 {
            return Err("NEMESIS_SECONDS must be at least 1".into());
        }
        let list: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
        let rerun = format!("NEMESIS_SECONDS={seconds} NEMESIS_NODES={} {rerun}", list.join(","));
        Ok(Config::new(seed, seconds, sizes, out_dir, &rerun))
    }

    /// The command line that replays this run.
    pub fn replay(&self) -> String {
        format!("NEMESIS_SEED={} {}", self.seed, self.rerun)
    }
}

/// What one cluster's run found.
#[derive(Debug, Default)]
pub struct ClusterReport {
    /// Nodes the cluster started with.
    pub size: usize,
    /// Seconds of faults it got.
    pub seconds: u64,
    /// Client operations: settings calls and events.
    pub operations: usize,
    /// Operations whose outcome stayed unknown.
    pub unknown: usize,
    /// Acknowledged writes and events.
    pub acknowledged: usize,
    /// Faults dealt, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Runs checked.
    pub runs: usize,
    /// Acknowledged writes or events that are gone.
    pub lost: Vec<String>,
    /// Every other broken rule.
    pub anomalies: Vec<String>,
    /// Surprises that break no rule.
    pub notes: Vec<String>,
    /// The digest every node converged to.
    pub digest: Option<String>,
    /// Where its histories and node logs were written.
    pub dir: PathBuf,
}

/// The outcome of a whole nemesis run.
#[derive(Debug)]
pub struct Summary {
    /// The config it ran with.
    pub config: Config,
    /// `Ok(bridge)` if partitions ran in network namespaces, else why they were skipped.
    pub network: Result<(), String>,
    /// Kinds of fault this machine or build could not deal, and why.
    pub skipped: Vec<(&'static str, String)>,
    /// One report per cluster size.
    pub clusters: Vec<ClusterReport>,
}

impl Summary {
    /// Client operations in all.
    pub fn operations(&self) -> usize {
        self.clusters.iter().map(|c| c.operations).sum()
    }
    /// Faults dealt in all.
    pub fn faults(&self) -> usize {
        self.clusters.iter().map(|c| c.faults.values().sum::<usize>()).sum()
    }
    /// Acknowledged writes and events in all.
    pub fn acknowledged(&self) -> usize {
        self.clusters.iter().map(|c| c.acknowledged).sum()
    }
    /// Acknowledged writes and events lost in all.
    pub fn lost(&self) -> usize {
        self.clusters.iter().map(|c| c.lost.len()).sum()
    }
    /// Anomalies in all.
    pub fn anomalies(&self) -> usize {
        self.clusters.iter().map(|c| c.anomalies.len()).sum()
    }
    /// True if nothing was lost and nothing broke a rule.
    pub fn passed(&self) -> bool {
        self.lost() == 0 && self.anomalies() == 0
    }

    /// The summary file's content. The first five fields are the contract
    /// (`lost` and `anomalies` must be 0); the rest help whoever reads it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "operations": self.operations(),
            "faults": self.faults(),
            "acknowledged": self.acknowledged(),
            "lost": self.lost(),
            "anomalies": self.anomalies(),
            "seed": self.config.seed,
            "seconds": self.config.seconds,
            "replay": self.config.replay(),
            "network_faults": match &self.network {
                Ok(()) => "network namespaces".to_string(),
                Err(why) => format!("skipped: {why}"),
            },
            "skipped_faults": self.skipped.iter().map(|(f, why)| (f.to_string(), why.clone())).collect::<BTreeMap<_, _>>(),
            "clusters": self.clusters.iter().map(|c| serde_json::json!({
                "nodes": c.size,
                "seconds": c.seconds,
                "operations": c.operations,
                "unknown": c.unknown,
                "acknowledged": c.acknowledged,
                "faults": c.faults,
                "runs": c.runs,
                "lost": c.lost,
                "anomalies": c.anomalies,
                "notes": c.notes,
                "digest": c.digest,
                "dir": c.dir.display().to_string(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Prints the summary (and the first lost writes and anomalies) to stderr.
    pub fn print(&self) {
        eprintln!(
            "==== nemesis summary: seed {}, {} s of faults ====",
            self.config.seed, self.config.seconds
        );
        if let Err(why) = &self.network {
            eprintln!("network partitions SKIPPED: {why}");
        }
        for (fault, why) in &self.skipped {
            eprintln!("{fault} SKIPPED: {why}");
        }
        for c in &self.clusters {
            eprintln!(
                "{} nodes, {} s: {} operations ({} of unknown outcome), {} acknowledged, {} runs, faults {:?}; \
                 lost {}, anomalies {}; converged: {}",
                c.size,
                c.seconds,
                c.operations,
                c.unknown,
                c.acknowledged,
                c.runs,
                c.faults,
                c.lost.len(),
                c.anomalies.len(),
                c.digest.as_deref().unwrap_or("NO")
            );
            for n in &c.notes {
                eprintln!("  note: {n}");
            }
            for l in c.lost.iter().take(20) {
                eprintln!("  LOST: {l}");
            }
            for a in c.anomalies.iter().take(20) {
                eprintln!("  ANOMALY: {a}");
            }
            if !c.lost.is_empty() || !c.anomalies.is_empty() {
                eprintln!("  histories and node logs: {}", c.dir.display());
            }
        }
        eprintln!(
            "total: operations {}, faults {}, acknowledged {}, lost {}, anomalies {} => {}",
            self.operations(),
            self.faults(),
            self.acknowledged(),
            self.lost(),
            self.anomalies(),
            if self.passed() { "PASSED" } else { "FAILED" }
        );
        eprintln!("replay: {}", self.config.replay());
    }

    /// Writes [`Summary::to_json`] to `path`, making its directory.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&self.to_json()).expect("the summary is valid JSON");
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Runs the suite as `config` says and returns what it found. Partitions
/// run in network namespaces where the machine allows (see
/// [`Network::probe`]); elsewhere they are skipped, with the reason in the
/// summary and on stderr, and the other faults still run.
pub async fn run(config: &Config) -> Summary {
    eprintln!(
        "[nemesis] seed {} ({} s of faults over cluster sizes {:?}); replay with: {}",
        config.seed,
        config.seconds,
        config.sizes,
        config.replay()
    );
    let network = Network::probe();
    if let Err(why) = &network {
        eprintln!("[nemesis] SKIPPED: network partitions: {why}; the other faults still run");
    }
    let storage = Arc::new(Storage::probe());
    let skipped: Vec<(&'static str, String)> = [Fault::DiskFull, Fault::IoError, Fault::Wipe]
        .into_iter()
        .filter_map(|f| f.available(true, &storage).err().map(|why| (f.name(), why)))
        .collect();
    for (fault, why) in &skipped {
        eprintln!("[nemesis] SKIPPED: {fault}: {why}; the other faults still run");
    }
    let master = Rng::new(config.seed);
    let per_cluster = (config.seconds / config.sizes.len().max(1) as u64).max(1);
    let mut clusters = Vec::new();
    let mut seen: BTreeMap<usize, u64> = BTreeMap::new();
    for &size in &config.sizes {
        let repeat = seen.entry(size).or_default();
        let label = if *repeat == 0 {
            format!("c{size}")
        } else {
            format!("c{size}x{repeat}")
        };
        // Each size has its own stream, so `NEMESIS_NODES=5` replays the 5-node part of a run.
        let rng = master.fork(size as u64 + 1000 * *repeat);
        *repeat += 1;
        clusters.push(run_cluster(config, &label, size, per_cluster, rng, network.is_ok(), &storage).await);
    }
    Summary {
        config: config.clone(),
        network,
        skipped,
        clusters,
    }
}

/// One cluster's run: form, load, fault, heal, check.
async fn run_cluster(
    config: &Config,
    label: &str,
    size: usize,
    seconds: u64,
    rng: Rng,
    partitions: bool,
    storage: &Arc<Storage>,
) -> ClusterReport {
    let tag = format!("{size}n");
    let dir = config.out_dir.join(label);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    let mut report = ClusterReport {
        size,
        seconds,
        dir: dir.clone(),
        ..ClusterReport::default()
    };
    let net = partitions.then(|| Arc::new(Network::create().unwrap_or_else(|e| panic!("setting up the network: {e}"))));
    let options = Options {
        snapshot_threshold: Some(config.snapshot_threshold),
        ..Options::default()
    };
    let started = Instant::now();
    if let Some(net) = &net {
        eprintln!(
            "[nemesis {tag}] each node in its own network namespace, behind hub {}",
            net.hub()
        );
    }
    let mut cluster = {
        let (net, storage) = (net.clone(), storage.clone());
        Cluster::start_placed(size, options, move |c| {
            storage.place(c);
            if let Some(net) = &net {
                net.place(c);
            }
        })
        .await
    };
    eprintln!("[nemesis {tag}] {size}-node cluster formed in {:?}", started.elapsed());

    let history = Arc::new(History::new());
    let records = Arc::new(Mutex::new(runs::Records::default()));
    let targets = Targets::default();
    let ctx = Ctx {
        history: history.clone(),
        targets: targets.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        rng: rng.fork(1),
        label: label.to_string(),
    };
    let leader = cluster.leader().await;
    let mut resources = config.resources;
    if let Err(e) = runs::setup(&cluster.node(leader).client_addr(), resources, &records).await {
        report
            .anomalies
            .push(format!("setting up the resources on a healthy cluster: {e}"));
        resources = 0;
    }

    let mut nem = Nemesis::new(
        &mut cluster,
        net.as_deref(),
        storage,
        targets,
        rng.fork(2),
        &tag,
        history.started(),
    );
    nem.deal_first(&config.first);
    let mut workload = Workload::start(&ctx, config.writers, config.cas_clients, config.shared_keys);
    if resources > 0 {
        workload.add(tokio::spawn(runs::drive(ctx.clone(), resources, records.clone())));
    }
    let mut timing = rng.fork(3);
    tokio::time::sleep(timing.between(config.quiet.0, config.quiet.1)).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let fault = nem.next_fault();
        let hold = timing.between(config.hold.0, config.hold.1);
        nem.inject(fault, hold).await;
        tokio::time::sleep(timing.between(config.quiet.0, config.quiet.1)).await;
    }
    nem.heal_all().await;
    let stuck = workload.stop().await;
    if stuck > 0 {
        report.anomalies.push(format!(
            "{stuck} client tasks did not stop within their timeout: a harness bug"
        ));
    }
    eprintln!("[nemesis {tag}] faults over, everything healed; checking");

    // A member that stopped serving as "removed" though nobody removed it is
    // broken for good: report it, and check the rest of the cluster without it.
    let broken = self_removed(&nem).await;
    for &i in &broken {
        report.anomalies.push(format!(
            "{} (id {}) stopped serving as removed from the cluster, though the suite never removed it \
             (its log says when: {})",
            nem.cluster.node(i).name(),
            nem.cluster.node(i).id(),
            dir.join(format!("{}.log", nem.cluster.node(i).name())).display()
        ));
    }

    // The cluster must come back: one leader, every member in.
    let leader = match settle(&mut nem, &broken).await {
        Ok(l) => Some(l),
        Err(why) => {
            report.anomalies.push(format!(
                "the cluster did not settle within {SETTLE:?} after healing: {why}"
            ));
            nem.leader().await
        }
    };
    report.faults = nem.counts.clone();
    report.notes = nem.notes.clone();
    let members: Vec<usize> = nem.members().into_iter().filter(|i| !broken.contains(i)).collect();

    // The final reads, recorded as operations of their own.
    let final_ok = match leader {
        Some(l) => final_reads(&history, &nem.cluster.node(l).client_addr()).await,
        None => Err("no leader to read from".to_string()),
    };
    if let Err(e) = &final_ok {
        report
            .anomalies
            .push(format!("the final read after healing failed: {e}"));
    }

    // Runs: every one ended, once.
    let records = Arc::try_unwrap(records)
        .ok()
        .expect("the resource driver has stopped")
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    if let (Some(l), true) = (leader, resources > 0) {
        let found = runs::check(&nem.cluster.node(l).client_addr(), resources, &records, SETTLE).await;
        report.operations += found.operations;
        report.acknowledged += found.acknowledged;
        report.runs = found.runs;
        report.lost.extend(found.lost);
        report.anomalies.extend(found.anomalies);
        report.unknown += records
            .events
            .iter()
            .filter(|e| matches!(e.outcome, runs::EventOutcome::Unknown(_)))
            .count();
    }

    // Every node ends in the same state.
    match converge(nem.cluster, &members).await {
        Ok(d) => report.digest = Some(d),
        Err(e) => report.anomalies.push(e),
    }

    // The settings history.
    let ops = history.ops();
    if final_ok.is_ok() {
        let check_started = Instant::now();
        let found = checker::check(&ops, config.search_budget);
        eprintln!(
            "[nemesis {tag}] checked {} operations on {} keys in {:?}",
            found.operations,
            found.keys,
            check_started.elapsed()
        );
        report.operations += found.operations;
        report.acknowledged += found.acknowledged;
        report.unknown += found.unknown;
        report.lost.extend(found.lost);
        report.anomalies.extend(found.anomalies);
    } else {
        report.operations += ops.iter().filter(|o| o.client != FINAL_CLIENT).count();
        report.acknowledged += ops.iter().filter(|o| o.acknowledged()).count();
    }

    save(&dir, nem.cluster, &ops, &records, &nem.log);
    // The disks go before the cluster's temp dir, which holds their mount points.
    storage.unmount_all();
    report
}

/// The members that answer with the role "removed" (after healing).
async fn self_removed(nem: &Nemesis<'_>) -> Vec<usize> {
    let mut out = Vec::new();
    for i in nem.members() {
        if let Ok(s) = nem.cluster.node(i).status().await {
            if s.role == "removed" {
                out.push(i);
            }
        }
    }
    out
}

/// Waits until every member (but the `broken` ones, which stopped serving)
/// runs, answers, names the same leader in the same term, and that leader
/// lists exactly the members. Restarts members that exited on their own (a
/// join that gave up). Returns the leader.
async fn settle(nem: &mut Nemesis<'_>, broken: &[usize]) -> Result<usize, String> {
    let started = Instant::now();
    loop {
        nem.revive("after healing");
        let members = nem.members();
        for &i in &members {
            if !nem.cluster.node(i).is_running() {
                eprintln!(
                    "[nemesis] restarting {}, which exited on its own",
                    nem.cluster.node(i).name()
                );
                nem.cluster.node(i).restart();
            }
        }
        let why = match check_settled(nem, &members, broken).await {
            Ok(l) => return Ok(l),
            Err(why) => why,
        };
        if started.elapsed() > SETTLE {
            return Err(why);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn check_settled(nem: &Nemesis<'_>, members: &[usize], broken: &[usize]) -> Result<usize, String> {
    let mut views = Vec::new();
    for &i in members.iter().filter(|i| !broken.contains(i)) {
        let node = nem.cluster.node(i);
        match node.status().await {
            Ok(s) => views.push((i, s)),
            Err(e) => return Err(format!("{} does not answer: {}", node.name(), client::describe(&e))),
        }
    }
    let Some((_, first)) = views.first() else {
        return Err("no member serves".into());
    };
    let (leader_id, term) = (first.leader_id, first.term);
    let describe = || {
        views
            .iter()
            .map(|(i, s)| {
                format!(
                    "{} (id {}): {} in term {}, leader {}",
                    nem.cluster.node(*i).name(),
                    s.node_id,
                    s.role,
                    s.term,
                    s.leader_id
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if leader_id == 0 || views.iter().any(|(_, s)| s.leader_id != leader_id || s.term != term) {
        return Err(format!("no agreed leader: {}", describe()));
    }
    let Some((leader, status)) = views.iter().find(|(_, s)| s.node_id == leader_id) else {
        return Err(format!(
            "the leader {leader_id} is not one of the members: {}",
            describe()
        ));
    };
    let mut want: BTreeSet<u64> = views.iter().map(|(_, s)| s.node_id).collect();
    // Broken members are still in the configuration: nobody removed them.
    want.extend(broken.iter().map(|&i| nem.cluster.node(i).id()));
    let have: BTreeSet<u64> = status.members.iter().map(|m| m.id).collect();
    if want != have {
        return Err(format!(
            "the leader lists members {have:?}, the running members are {want:?}: {}",
            describe()
        ));
    }
    Ok(*leader)
}

/// A linearizable `List` of every key through `addr` (retried for up to 30
/// s), recorded as one final read of every key written or listed.
async fn final_reads(history: &History, addr: &str) -> Result<(), String> {
    let mut c = connect(addr);
    let started = Instant::now();
    let (listed, start, end) = loop {
        let start = history.now();
        match c
            .settings
            .list(ListRequest {
                prefix: String::new(),
                stale: false,
            })
            .await
        {
            Ok(r) => break (r.into_inner().settings, start, history.now()),
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("[nemesis] final list: {} (retrying)", client::describe(&e));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(format!("listing every key through {addr}: {}", client::describe(&e))),
        }
    };
    let mut keys: BTreeMap<String, Option<(String, u64)>> = BTreeMap::new();
    for op in history.ops() {
        keys.insert(op.key, None);
    }
    for s in listed {
        keys.insert(s.key, Some((s.value, s.mod_revision)));
    }
    for (key, value) in keys {
        history.record(
            FINAL_CLIENT,
            addr,
            &key,
            Call::Read,
            start,
            end,
            Outcome::Read { value },
        );
    }
    Ok(())
}

/// FNV-1a, 64 bits: a digest that is the same in every build and process.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= *b as u64;
        *hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    // A separator, so that ("ab", "c") and ("a", "bc") differ.
    *hash ^= 0xFF;
    *hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
}

/// One node's applied state: every setting and every resource, read stale
/// (its own state, not the leader's), as lines and their digest.
async fn state_of(addr: &str) -> Result<(Vec<String>, String), String> {
    let mut c = connect(addr);
    let settings = c
        .settings
        .list(ListRequest {
            prefix: String::new(),
            stale: true,
        })
        .await
        .map_err(|e| format!("stale list of settings on {addr}: {}", client::describe(&e)))?
        .into_inner()
        .settings;
    let resources = c
        .resources
        .list(ListResourcesRequest {
            kind: String::new(),
            stale: true,
        })
        .await
        .map_err(|e| format!("stale list of resources on {addr}: {}", client::describe(&e)))?
        .into_inner()
        .resources;
    let mut lines: Vec<String> = settings
        .iter()
        .map(|s| {
            format!(
                "setting {} = {:?} @{} (created @{}, version {})",
                s.key, s.value, s.mod_revision, s.create_revision, s.version
            )
        })
        .collect();
    lines.extend(resources.iter().map(|r| {
        format!(
            "resource {}/{} in {} v{} outputs {} run {:?}",
            r.kind,
            r.name,
            r.state,
            r.version,
            crate::resources::json_of(r.outputs.as_ref()),
            r.active_run_id
        )
    }));
    let mut hash = 0xCBF2_9CE4_8422_2325u64;
    for l in &lines {
        fnv(&mut hash, l.as_bytes());
    }
    Ok((lines, format!("{hash:016x}")))
}

/// Waits until every member has applied the same index, then compares the
/// digests of their applied states; returns the common digest, or what
/// differs. The indexes are read again after the lists, so a write landing
/// in between makes it look again rather than report a false difference.
async fn converge(cluster: &Cluster, members: &[usize]) -> Result<String, String> {
    let started = Instant::now();
    let mut last = String::from("no look yet");
    while started.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut applied = Vec::new();
        for &i in members {
            match cluster.node(i).status().await {
                Ok(s) => applied.push(s.applied_index),
                Err(e) => {
                    last = format!("{} does not answer: {}", cluster.node(i).name(), client::describe(&e));
                    break;
                }
            }
        }
        if applied.len() != members.len() || applied.iter().any(|a| *a != applied[0]) {
            if applied.len() == members.len() {
                last = format!("applied indexes differ: {applied:?}");
            }
            continue;
        }
        let mut states = Vec::new();
        for &i in members {
            match state_of(&cluster.node(i).client_addr()).await {
                Ok(s) => states.push((i, s)),
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        if states.len() != members.len() {
            continue;
        }
        let mut again = Vec::new();
        for &i in members {
            again.push(cluster.node(i).status().await.map(|s| s.applied_index).unwrap_or(0));
        }
        if again != applied {
            last = format!("still applying: {applied:?} then {again:?}");
            continue;
        }
        let (first, (first_lines, first_digest)) = &states[0];
        let mut diffs = Vec::new();
        for (i, (lines, digest)) in &states[1..] {
            if digest != first_digest {
                let a: BTreeSet<&String> = first_lines.iter().collect();
                let b: BTreeSet<&String> = lines.iter().collect();
                let only_a: Vec<&&String> = a.difference(&b).take(3).collect();
                let only_b: Vec<&&String> = b.difference(&a).take(3).collect();
                diffs.push(format!(
                    "{} (digest {digest}) differs from {} (digest {first_digest}) at the same applied index {}: \
                     only on {}: {only_a:?}; only on {}: {only_b:?}",
                    cluster.node(*i).name(),
                    cluster.node(*first).name(),
                    applied[0],
                    cluster.node(*first).name(),
                    cluster.node(*i).name()
                ));
            }
        }
        if diffs.is_empty() {
            return Ok(first_digest.clone());
        }
        return Err(format!("the nodes did not converge: {}", diffs.join("; ")));
    }
    Err(format!(
        "the nodes did not reach the same applied index within {SETTLE:?}: {last}"
    ))
}

/// Writes the run's histories, fault log and node logs under `dir`, so a
/// failure can be studied after the temp dirs are gone.
fn save(dir: &Path, cluster: &Cluster, ops: &[history::Op], records: &runs::Records, faults: &[String]) {
    let lines: Vec<String> = ops.iter().map(|o| o.to_json().to_string()).collect();
    let _ = std::fs::write(dir.join("history.jsonl"), lines.join("\n") + "\n");
    let events: Vec<String> = records
        .events
        .iter()
        .map(|e| {
            serde_json::json!({
                "resource": e.resource,
                "reason": e.reason,
                "node": e.node,
                "start_ms": e.start.as_secs_f64() * 1000.0,
                "end_ms": e.end.as_secs_f64() * 1000.0,
                "outcome": format!("{:?}", e.outcome),
            })
            .to_string()
        })
        .collect();
    let _ = std::fs::write(dir.join("events.jsonl"), events.join("\n") + "\n");
    let _ = std::fs::write(dir.join("faults.log"), faults.join("\n") + "\n");
    for node in cluster.nodes() {
        let _ = std::fs::copy(node.log_path(), dir.join(format!("{}.log", node.name())));
    }
}
