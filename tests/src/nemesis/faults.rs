//! The faults and their schedule. A run deals faults from a shuffled deck
//! (every kind once per round, so even a short run sees each), holds each
//! for a random while, heals it, and lets the cluster breathe for a random
//! while before the next. Every choice (the order, which node, how long)
//! comes from the run's seeded generator, so a seed replays its schedule;
//! "the leader" is whichever node leads when the fault is dealt.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::net::Network;
use super::rng::Rng;
use super::storage::{self, Storage};
use super::workload::{connect, Targets};
use crate::api::RemoveRequest;
use crate::client;
use crate::Cluster;

/// How long a joining or recovering node has to become a member: a
/// recovery first waits for the cluster to remove its old id, which takes
/// an election when the node led.
const MEMBER_WAIT: Duration = Duration::from_secs(60);

/// The kinds of fault a run deals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 a node (the leader half the time), restart it after the hold.
    Kill,
    /// SIGSTOP a node (the leader half the time), SIGCONT it after the hold.
    Pause,
    /// Cut the leader off from every other node (or take its link down).
    IsolateLeader,
    /// Split the nodes into a minority and a majority (1/2 of 3, 2/3 of 5).
    Split,
    /// Remove a node through `Cluster.Remove` and add a fresh one that joins.
    Churn,
    /// Two of kill, pause and a partition at once.
    Combo,
    /// Fill a node's disk until no space is left; free it after the hold.
    DiskFull,
    /// Make a node's writes and syncs under its data dir fail with EIO.
    IoError,
    /// kill -9 a node, delete its database, bring it back with `opsd recover --rejoin`.
    Wipe,
}

impl Fault {
    /// The name used in logs and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Split => "split",
            Fault::Churn => "churn",
            Fault::Combo => "combo",
            Fault::DiskFull => "disk-full",
            Fault::IoError => "io-error",
            Fault::Wipe => "wipe",
        }
    }

    /// Every kind, in the order the docs list them.
    pub const ALL: [Fault; 9] = [
        Fault::Kill,
        Fault::Pause,
        Fault::IsolateLeader,
        Fault::Split,
        Fault::Churn,
        Fault::Combo,
        Fault::DiskFull,
        Fault::IoError,
        Fault::Wipe,
    ];

    /// Whether this machine and build can deal it: `Err(why)` if not.
    pub fn available(self, network: bool, storage: &Storage) -> Result<(), String> {
        match self {
            Fault::IsolateLeader | Fault::Split if !network => Err("no network namespaces".into()),
            Fault::DiskFull => storage.tmpfs.clone(),
            Fault::IoError => storage.shim.as_ref().map(|_| ()).map_err(|e| e.clone()),
            Fault::Wipe => storage.recover.clone(),
            _ => Ok(()),
        }
    }
}

/// Every kind of fault this machine and build can deal.
pub fn deck(network: bool, storage: &Storage) -> Vec<Fault> {
    Fault::ALL
        .into_iter()
        .filter(|f| f.available(network, storage).is_ok())
        .collect()
}

/// How to undo one disruption.
#[derive(Debug)]
enum Undo {
    Restart(usize),
    Resume(usize),
    Heal,
    /// Free the node's disk, restart it if it stopped.
    Unfill(usize),
    /// Let the node's writes work again, restart it if it stopped.
    IoWorks(usize),
    /// Bring a wiped node back with `opsd recover --rejoin`.
    Rejoin(usize),
}

/// The fault injector of one cluster: owns the cluster while the workload
/// runs against it, and keeps track of which nodes are members.
pub struct Nemesis<'a> {
    /// The cluster under test.
    pub cluster: &'a mut Cluster,
    net: Option<&'a Network>,
    targets: Targets,
    rng: Rng,
    /// Nodes removed from the cluster (and killed for good).
    pub retired: HashSet<usize>,
    t0: Instant,
    tag: String,
    /// Faults dealt, by kind.
    pub counts: BTreeMap<&'static str, usize>,
    /// Each disruption as it happened, with its time since the run's start.
    pub log: Vec<String>,
    /// Things that did not go as planned but break no rule (a removal that
    /// timed out), for the summary.
    pub notes: Vec<String>,
    deck: Vec<Fault>,
    dealt: Vec<Fault>,
}

impl<'a> Nemesis<'a> {
    /// An injector for `cluster`, with partitions through `net` if given; its
    /// log's times count from `t0` (the history's start, so that faults and
    /// operations line up).
    pub fn new(
        cluster: &'a mut Cluster,
        net: Option<&'a Network>,
        storage: &Storage,
        targets: Targets,
        rng: Rng,
        tag: &str,
        t0: Instant,
    ) -> Self {
        let deck = deck(net.is_some(), storage);
        let nem = Nemesis {
            cluster,
            net,
            targets,
            rng,
            retired: HashSet::new(),
            t0,
            tag: tag.to_string(),
            counts: BTreeMap::new(),
            log: Vec::new(),
            notes: Vec::new(),
            deck,
            dealt: Vec::new(),
        };
        nem.publish();
        nem
    }

    fn say(&mut self, what: String) {
        let line = format!("+{:.1}s {what}", self.t0.elapsed().as_secs_f64());
        eprintln!("[nemesis {}] {line}", self.tag);
        self.log.push(line);
    }

    /// Indexes of the nodes that are members (not removed), up or down.
    pub fn members(&self) -> Vec<usize> {
        (0..self.cluster.len()).filter(|i| !self.retired.contains(i)).collect()
    }

    /// Members that can answer now (running, not paused).
    pub fn up(&self) -> Vec<usize> {
        self.members()
            .into_iter()
            .filter(|&i| self.cluster.node(i).is_serving())
            .collect()
    }

    fn name(&self, i: usize) -> String {
        self.cluster.node(i).name().to_string()
    }

    /// Tells the clients which nodes to use: every member, up or not.
    fn publish(&self) {
        self.targets.set(
            self.members()
                .iter()
                .map(|&i| self.cluster.node(i).client_addr())
                .collect(),
        );
    }

    /// The node that says it leads, with the highest term, among the members
    /// that answer within a second and a half; `None` if none does.
    pub async fn leader(&self) -> Option<usize> {
        let mut asks = JoinSet::new();
        for i in self.up() {
            let addr = self.cluster.node(i).client_addr();
            asks.spawn(async move { (i, client::status(&addr, Duration::from_millis(1500)).await) });
        }
        let mut best: Option<(u64, usize)> = None;
        while let Some(answer) = asks.join_next().await {
            if let Ok((i, Ok(s))) = answer {
                if s.role == "leader" && best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// A node to hurt: the leader with probability `leader_p` (if one is
    /// known and not excluded), else one of the running members not excluded.
    /// Draws the same random numbers whatever the cluster's state, so that
    /// the rest of the schedule does not depend on who led when.
    async fn target(&mut self, leader_p: f64, exclude: &[usize]) -> Option<(usize, bool)> {
        let want_leader = self.rng.chance(leader_p);
        let roll = self.rng.next_u64();
        if want_leader {
            if let Some(l) = self.leader().await {
                if !exclude.contains(&l) {
                    return Some((l, true));
                }
            }
        }
        let candidates: Vec<usize> = self.up().into_iter().filter(|i| !exclude.contains(i)).collect();
        if candidates.is_empty() {
            return None;
        }
        Some((candidates[(roll % candidates.len() as u64) as usize], false))
    }

    /// Deals the next fault from the deck (reshuffled each round).
    pub fn next_fault(&mut self) -> Fault {
        if self.dealt.is_empty() {
            self.dealt = self.deck.clone();
            self.rng.shuffle(&mut self.dealt);
        }
        self.dealt.pop().expect("the deck is never empty")
    }

    /// Makes the first round deal `faults` (those in the deck) before the
    /// others, so that a short run is sure to see them.
    pub fn deal_first(&mut self, faults: &[Fault]) {
        let mut round = self.deck.clone();
        self.rng.shuffle(&mut round);
        // The round is dealt from its end.
        round.sort_by_key(|f| faults.contains(f));
        self.dealt = round;
    }

    /// Restarts members whose process exited on its own (a node that
    /// stopped on a storage error), noting each in the summary.
    pub fn revive(&mut self, during: &str) {
        for i in self.members() {
            let node = self.cluster.node(i);
            if node.is_running() {
                continue;
            }
            let Some(status) = node.exited() else {
                // Killed by the suite, waiting for its restart.
                continue;
            };
            let why = node.last_error_line().unwrap_or_else(|| "no error logged".into());
            node.restart();
            let note = format!(
                "{} exited on its own {during} ({status}; {why}); restarted it",
                self.name(i)
            );
            self.say(note.clone());
            self.notes.push(note);
        }
    }

    /// Deals one fault, holds it for `hold`, and heals it.
    pub async fn inject(&mut self, fault: Fault, hold: Duration) {
        self.revive("before this fault");
        *self.counts.entry(fault.name()).or_default() += 1;
        if fault == Fault::Churn {
            self.churn().await;
            return;
        }
        let undo = if fault == Fault::Combo {
            let mut parts = vec![Fault::Kill, Fault::Pause];
            if self.net.is_some() {
                parts.push(if self.rng.chance(0.5) {
                    Fault::IsolateLeader
                } else {
                    Fault::Split
                });
            }
            self.rng.shuffle(&mut parts);
            self.say(format!("combo: {} + {}", parts[0].name(), parts[1].name()));
            let mut undo = self.disrupt(parts[0], &[]).await;
            let hurt: Vec<usize> = undo
                .iter()
                .filter_map(|u| match u {
                    Undo::Restart(i) | Undo::Resume(i) | Undo::Unfill(i) | Undo::IoWorks(i) | Undo::Rejoin(i) => {
                        Some(*i)
                    }
                    Undo::Heal => None,
                })
                .collect();
            undo.extend(self.disrupt(parts[1], &hurt).await);
            undo
        } else {
            self.disrupt(fault, &[]).await
        };
        tokio::time::sleep(hold).await;
        self.undo(undo).await;
    }

    async fn disrupt(&mut self, fault: Fault, exclude: &[usize]) -> Vec<Undo> {
        match fault {
            Fault::Kill => match self.target(0.5, exclude).await {
                Some((i, leader)) => {
                    self.cluster.node(i).kill9();
                    self.say(format!(
                        "kill -9 {}{}",
                        self.name(i),
                        if leader { " (leader)" } else { "" }
                    ));
                    vec![Undo::Restart(i)]
                }
                None => Vec::new(),
            },
            Fault::Pause => match self.target(0.5, exclude).await {
                Some((i, leader)) => {
                    self.cluster.node(i).sigstop();
                    self.say(format!(
                        "SIGSTOP {}{}",
                        self.name(i),
                        if leader { " (leader)" } else { "" }
                    ));
                    vec![Undo::Resume(i)]
                }
                None => Vec::new(),
            },
            Fault::IsolateLeader => {
                let Some(net) = self.net else { return Vec::new() };
                let members = self.members();
                let (roll, link_down) = (self.rng.next_u64(), self.rng.chance(0.3));
                let (l, known) = match self.leader().await {
                    Some(l) => (l, true),
                    None => (members[(roll % members.len() as u64) as usize], false),
                };
                let who = format!(
                    "{}{}",
                    self.name(l),
                    if known { " (leader)" } else { " (no leader known)" }
                );
                if link_down {
                    match net.set_link(&self.name(l), false) {
                        Ok(()) => self.say(format!("link of {who} down")),
                        Err(e) => panic!("taking the link of {who} down: {e}"),
                    }
                } else {
                    let others: Vec<String> = members.iter().filter(|&&i| i != l).map(|&i| self.name(i)).collect();
                    net.partition(&[vec![self.name(l)], others])
                        .unwrap_or_else(|e| panic!("isolating {who}: {e}"));
                    self.say(format!("isolate {who} from the other nodes"));
                }
                vec![Undo::Heal]
            }
            Fault::Split => {
                let Some(net) = self.net else { return Vec::new() };
                let mut members = self.members();
                self.rng.shuffle(&mut members);
                let minority = (members.len().saturating_sub(1)) / 2;
                let names = |side: &[usize]| side.iter().map(|&i| self.name(i)).collect::<Vec<_>>();
                let (a, b) = (names(&members[..minority]), names(&members[minority..]));
                net.partition(&[a.clone(), b.clone()])
                    .unwrap_or_else(|e| panic!("splitting {a:?} from {b:?}: {e}"));
                self.say(format!("split {a:?} | {b:?}"));
                vec![Undo::Heal]
            }
            Fault::DiskFull => match self.target(0.5, exclude).await {
                Some((i, leader)) => {
                    let who = format!("{}{}", self.name(i), if leader { " (leader)" } else { "" });
                    match storage::fill(self.cluster.node(i).config()) {
                        Ok(mib) => self.say(format!("fill the disk of {who} ({mib} MiB of filler)")),
                        Err(e) => panic!("filling the disk of {who}: {e}"),
                    }
                    vec![Undo::Unfill(i)]
                }
                None => Vec::new(),
            },
            Fault::IoError => match self.target(0.5, exclude).await {
                Some((i, leader)) => {
                    let who = format!("{}{}", self.name(i), if leader { " (leader)" } else { "" });
                    storage::set_io_error(self.cluster.node(i).config(), true)
                        .unwrap_or_else(|e| panic!("failing the writes of {who}: {e}"));
                    self.say(format!("writes and syncs of {who} fail with EIO"));
                    vec![Undo::IoWorks(i)]
                }
                None => Vec::new(),
            },
            Fault::Wipe => match self.target(0.5, exclude).await {
                // Another member must be up to rejoin through, and the
                // voters up without it must be a quorum: its id must leave
                // the cluster before it comes back, and a wiped voter
                // never comes back to make up one.
                Some((i, leader)) if self.up().len() > 1 && self.quorum_without(i).await => {
                    let node = self.cluster.node(i);
                    node.kill9();
                    storage::wipe(node.config()).unwrap_or_else(|e| panic!("wiping {}: {e}", node.name()));
                    let old = node.id();
                    node.forget_id();
                    self.say(format!(
                        "kill -9 {}{} (id {old}) and delete its db/",
                        self.name(i),
                        if leader { " (leader)" } else { "" }
                    ));
                    vec![Undo::Rejoin(i)]
                }
                _ => Vec::new(),
            },
            Fault::Churn | Fault::Combo => unreachable!("not a single disruption"),
        }
    }

    /// Brings a wiped node back: `opsd ... recover --rejoin ADDRS` through the
    /// serving members, then waits until the cluster lists it under its new id.
    async fn rejoin(&mut self, i: usize) {
        let via: Vec<usize> = self.up().into_iter().filter(|&j| j != i).collect();
        if via.is_empty() {
            let note = format!("wipe: no member up to rejoin {} through; left down", self.name(i));
            self.say(note.clone());
            self.notes.push(note);
            return;
        }
        let rejoin: Vec<String> = via.iter().map(|&j| self.cluster.node(j).client_addr()).collect();
        self.cluster.node(i).recover(&rejoin);
        self.say(format!("{}: opsd recover --rejoin {}", self.name(i), rejoin.join(",")));
        self.await_member(i, "recover").await;
    }

    /// Waits up to [`MEMBER_WAIT`] until node `i` (joining, or rejoining
    /// under a new id) is listed by another member; a process that finished its work and
    /// exited successfully is started again with its usual flags.
    async fn await_member(&mut self, i: usize, what: &str) {
        let deadline = Instant::now() + MEMBER_WAIT;
        let mut id = 0;
        while Instant::now() < deadline {
            if !self.cluster.node(i).is_running() {
                match self.cluster.node(i).exited() {
                    Some(status) if status.success() => {
                        self.cluster.node(i).restart();
                        self.say(format!("{} finished its {what}; restarted it", self.name(i)));
                    }
                    _ => break,
                }
            }
            if id == 0 {
                id = match self.cluster.node(i).status().await {
                    Ok(s) => s.node_id,
                    Err(_) => 0,
                };
            }
            if id != 0 {
                let others: Vec<usize> = self.up().into_iter().filter(|&j| j != i).collect();
                for j in others {
                    if self.member_ids(j).await.is_some_and(|ids| ids.contains(&id)) {
                        // Node::id() is learned by wait_ready; it answers at once now.
                        self.cluster.node(i).wait_ready(Duration::from_secs(5)).await;
                        self.say(format!("{} (id {id}) is a member", self.name(i)));
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let note = format!(
            "{what}: {} did not become a member within {MEMBER_WAIT:?} ({}); it is left to finish",
            self.name(i),
            match self.cluster.node(i).exited() {
                Some(status) => format!(
                    "it exited: {status}; {}",
                    self.cluster.node(i).last_error_line().unwrap_or_default()
                ),
                None => "still running".to_string(),
            }
        );
        self.say(note.clone());
        self.notes.push(note);
    }

    async fn undo(&mut self, undo: Vec<Undo>) {
        for u in undo {
            match u {
                Undo::Restart(i) => {
                    if !self.cluster.node(i).is_running() {
                        self.cluster.node(i).restart();
                        self.say(format!("restart {}", self.name(i)));
                    }
                }
                Undo::Resume(i) => {
                    if self.cluster.node(i).is_paused() {
                        self.cluster.node(i).sigcont();
                        self.say(format!("SIGCONT {}", self.name(i)));
                    }
                }
                Undo::Heal => {
                    if let Some(net) = self.net {
                        net.heal().unwrap_or_else(|e| panic!("healing the network: {e}"));
                        self.say("heal the network".into());
                    }
                }
                Undo::Unfill(i) => {
                    storage::unfill(self.cluster.node(i).config())
                        .unwrap_or_else(|e| panic!("freeing the disk of {}: {e}", self.name(i)));
                    self.say(format!("free the disk of {}", self.name(i)));
                    self.revive("while its disk was full");
                }
                Undo::IoWorks(i) => {
                    storage::set_io_error(self.cluster.node(i).config(), false)
                        .unwrap_or_else(|e| panic!("healing the writes of {}: {e}", self.name(i)));
                    self.say(format!("writes and syncs of {} work again", self.name(i)));
                    self.revive("while its writes failed");
                }
                Undo::Rejoin(i) => self.rejoin(i).await,
            }
        }
    }

    /// Heals everything: the network, paused nodes, killed members.
    pub async fn heal_all(&mut self) {
        let mut undo = vec![Undo::Heal];
        for i in self.members() {
            undo.push(Undo::Resume(i));
            undo.push(Undo::Restart(i));
        }
        self.undo(undo).await;
    }

    /// Membership churn under load: remove a member and add a fresh node, in
    /// either order, keeping the cluster within one node of its size.
    async fn churn(&mut self) {
        let size = self.members().len();
        let remove_first = self.rng.chance(0.5);
        if remove_first && size > 2 {
            self.remove_one().await;
            self.add_one().await;
        } else {
            self.add_one().await;
            self.remove_one().await;
        }
    }

    /// The member ids a node reports, if it answers.
    /// Whether the voters up other than node `i` are a quorum of all the
    /// voters (as a node other than `i` sees them); true for a learner.
    async fn quorum_without(&self, i: usize) -> bool {
        let id = self.cluster.node(i).id();
        let up: Vec<u64> = self
            .up()
            .into_iter()
            .filter(|&j| j != i)
            .map(|j| self.cluster.node(j).id())
            .collect();
        for &j in &self.up() {
            if j == i {
                continue;
            }
            let Ok(s) = client::status(&self.cluster.node(j).client_addr(), Duration::from_millis(1500)).await else {
                continue;
            };
            let voters: Vec<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
            if !voters.contains(&id) {
                return true;
            }
            let up_voters = voters.iter().filter(|v| up.contains(v)).count();
            return up_voters > voters.len() / 2;
        }
        false
    }

    async fn member_ids(&self, i: usize) -> Option<Vec<u64>> {
        client::status(&self.cluster.node(i).client_addr(), Duration::from_millis(1500))
            .await
            .ok()
            .map(|s| s.members.iter().map(|m| m.id).collect())
    }

    /// Removes a running member (the leader a third of the time) through
    /// another member's API; once the cluster confirms it is gone, kills it
    /// for good. A removal that is not confirmed leaves the node a member.
    async fn remove_one(&mut self) {
        let roll = self.rng.next_u64();
        let picked = self.target(0.33, &[]).await;
        let up = self.up();
        if up.len() < 2 {
            self.notes
                .push("churn: fewer than two members up, nothing removed".into());
            return;
        }
        let Some((target, leader)) = picked else {
            return;
        };
        let id = self.cluster.node(target).id();
        if id == 0 {
            // A node added by an earlier churn that has not finished joining: its id is not known yet.
            self.notes.push(format!(
                "churn: {} has not joined yet, nothing removed",
                self.name(target)
            ));
            return;
        }
        let via_candidates: Vec<usize> = up.iter().copied().filter(|&i| i != target).collect();
        let via = via_candidates[(roll % via_candidates.len() as u64) as usize];
        let who = format!("{}{}", self.name(target), if leader { " (leader)" } else { "" });
        self.say(format!("remove {who} (id {id}) through {}", self.name(via)));
        let started = Instant::now();
        let mut c = connect(&self.cluster.node(via).client_addr());
        let answer = loop {
            match c.cluster.remove(RemoveRequest { node_id: id }).await {
                Ok(_) => break "removed".to_string(),
                Err(e) if e.code() == tonic::Code::Unavailable && started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => break super::history::describe(&e),
            }
        };
        // Confirmed when every other member that answers no longer lists it.
        let mut confirmed = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let mut views = 0;
            let mut gone = true;
            for &i in &via_candidates {
                if let Some(ids) = self.member_ids(i).await {
                    views += 1;
                    gone &= !ids.contains(&id);
                }
            }
            if views > 0 && gone {
                confirmed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if confirmed {
            self.cluster.node(target).kill9();
            self.retired.insert(target);
            self.publish();
            self.say(format!("{who} is out ({answer}); killed it for good"));
        } else {
            let note = format!("churn: removing {who} was answered {answer:?} and not confirmed; it stays a member");
            self.say(note.clone());
            self.notes.push(note);
        }
    }

    /// Starts a fresh node that joins through the serving members; once the
    /// cluster lists it, clients use it too.
    async fn add_one(&mut self) {
        let config = self.cluster.node_config();
        let i = self.cluster.spawn(config);
        self.say(format!("add {} (joining)", self.name(i)));
        self.publish();
        self.await_member(i, "churn").await;
    }
}
