//! A running cluster node: its Raft instance, its peer server, the leader's
//! housekeeping (promoting caught-up learners), and the operations the
//! application calls — write, read barrier, join, remove, status — each of
//! which runs on the leader, forwarded there from any node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, Config, RaftMetrics, ServerState, SnapshotPolicy};
use opsd_proto::peer::peer_server::PeerServer;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tracing::{error, info, warn};

use crate::check;
use crate::data_dir::DataDir;
use crate::disk;
use crate::error::ClusterError;
use crate::log_store::LogStore;
use crate::network::{PeerChannels, PeerMethod, PeerNetwork, MAX_PEER_MESSAGE};
use crate::peer_service::PeerService;
use crate::state_machine::{AppliedEvent, StateMachineApp, StateMachineStore, StateReader};
use crate::storage::Store;
use crate::types::{Command, NodeId, NodeInfo, Raft};

/// How a node runs. The defaults suit a LAN or loopback.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How others reach this node.
    pub advertise: NodeInfo,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Minimum election timeout (the maximum is twice it).
    pub election_timeout: Duration,
    /// Build a snapshot every this many applied entries, then purge the log
    /// up to half that behind it.
    pub snapshot_threshold: u64,
    /// Learners are promoted to voters while there are fewer voters than this.
    pub max_voters: usize,
    /// How long a write or read waits for the cluster before failing.
    pub request_timeout: Duration,
    /// The application's table names.
    pub tables: Vec<String>,
    /// While the data dir's filesystem has less free space than this, the
    /// node takes no writes (0: no floor).
    pub min_free_bytes: u64,
    /// The cluster CA and this node's certificate: the peer port then speaks
    /// mutual TLS (a peer must present a certificate of the CA) and peers
    /// are dialled with this node's certificate. `None`: plain HTTP/2 (a
    /// cluster bootstrapped before TLS, and tests of the cluster alone).
    pub tls: Option<opsd_proto::transport::Tls>,
}

/// How often the free space of the data dir's filesystem is measured.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A learner within this many entries of the leader's log counts as caught up.
const PROMOTE_LAG: u64 = 100;
/// How often the leader looks for learners to promote.
const PROMOTE_EVERY: Duration = Duration::from_millis(300);

/// How long the node waits after a removal notice it found false before it
/// checks another: a stream of forged notices costs the leader at most one
/// confirmation a second per node.
const REMOVAL_CHECK_PAUSE: Duration = Duration::from_secs(1);

/// Leadership checks a batch of linearizable reads gets before they fail
/// for want of a quorum.
const READ_CHECKS: usize = 3;

/// The most commands the leader puts in one entry.
const MAX_SHARED_WRITES: usize = 512;
/// Shared entries proposed and not yet committed, at most.
const SHARED_ENTRIES_IN_FLIGHT: usize = 2;

/// A request that only the leader can serve, forwarded to it by any node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    Write(Vec<u8>),
    ReadIndex,
    AddNode {
        id: NodeId,
        info: NodeInfo,
        cluster_id: String,
    },
    RemoveNode {
        id: NodeId,
    },
    /// A write that may share its log entry with others.
    WriteShared(Vec<u8>),
    /// The leader's view of the members: role, contact, lag.
    Members,
}

/// A linearizable read waiting on the leader for the next leadership check.
type ReadWaiter = oneshot::Sender<Result<u64, ClusterError>>;

/// A write waiting on the leader for the next shared entry.
struct SharedWrite {
    command: Vec<u8>,
    answer: oneshot::Sender<Result<(u64, Vec<u8>), ClusterError>>,
}

impl LeaderRequest {
    /// Whether serving it appends to the log.
    fn writes(&self) -> bool {
        match self {
            LeaderRequest::Write(_) | LeaderRequest::WriteShared(_) | LeaderRequest::AddNode { .. } => true,
            // A removal is allowed, to take a node out whose disk failed.
            LeaderRequest::ReadIndex | LeaderRequest::RemoveNode { .. } | LeaderRequest::Members => false,
        }
    }
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderResponse {
    Written { index: u64, response: Vec<u8> },
    ReadIndex { index: u64 },
    Members(Vec<Member>),
    MembersHealth(Vec<MemberHealth>),
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its addresses.
    pub info: NodeInfo,
    /// Voter or learner.
    pub voter: bool,
}

impl Member {
    /// Its role when `leader` leads.
    pub fn role(&self, leader: Option<NodeId>) -> Role {
        if leader == Some(self.id) {
            Role::Leader
        } else if self.voter {
            Role::Follower
        } else {
            Role::Learner
        }
    }
}

/// How the leader hears from a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Contact {
    /// Not known: not the leader's view, or the leader has not called it yet.
    Unknown,
    /// It answered the leader's last message, `since_ms` ago.
    Reachable { since_ms: u64 },
    /// It has not answered the leader for `since_ms` (since its last answer,
    /// or since the leader first called it).
    Unreachable { since_ms: u64 },
}

/// A member with what the leader knows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    /// Who and where.
    pub member: Member,
    /// Leader, follower (a voter) or learner.
    pub role: Role,
    /// Whether it answers the leader.
    pub contact: Contact,
    /// The last log index the leader knows it holds (leader's view only).
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader's log (leader's view only).
    pub lag: Option<u64>,
}

/// The members as one node sees them.
#[derive(Debug, Clone)]
pub struct MembersView {
    /// The members: voters first, then learners, each by id.
    pub members: Vec<MemberHealth>,
    /// The leader, if known.
    pub leader_id: Option<NodeId>,
    /// True if this is the leader's view (contact, matched index and lag
    /// known); false if it is the answering node's own (the leader could not
    /// be asked), where only the membership and roles are known.
    pub from_leader: bool,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Leads the cluster.
    Leader,
    /// A voter following a leader.
    Follower,
    /// A voter asking for votes.
    Candidate,
    /// A non-voting member, or a node not yet added.
    Learner,
    /// Removed from the cluster.
    Removed,
    /// Raft stopped: the node is shutting down, or it failed (see
    /// [`ClusterStatus::problem`]).
    Stopped,
}

impl Role {
    /// The role's name as the API shows it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Removed => "removed",
            Role::Stopped => "stopped",
        }
    }
}

/// A node's view of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// The cluster.
    pub cluster_id: String,
    /// The leader this node knows of.
    pub leader: Option<(NodeId, NodeInfo)>,
    /// The Raft term.
    pub term: u64,
    /// This node's role.
    pub role: Role,
    /// Last index in the log.
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Last index of the latest snapshot.
    pub snapshot_index: u64,
    /// Index the log was purged up to.
    pub purged_index: u64,
    /// The applied membership: voters first, then learners, each by id.
    pub members: Vec<Member>,
    /// Why this node takes no writes now (its disk is below the floor, or
    /// Raft stopped), if it does not.
    pub problem: Option<String>,
}

/// Why Raft stopped by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened; writes are refused with it.
    pub reason: String,
    /// True if a write to the data dir failed (a full disk, an I/O error):
    /// the log itself is fine, and the node may serve again once restarted
    /// on a disk that has room. False if the node cannot apply the log.
    pub storage: bool,
}

pub(crate) struct NodeInner {
    pub(crate) id: NodeId,
    pub(crate) cluster_id: String,
    pub(crate) info: NodeInfo,
    pub(crate) raft: Raft,
    pub(crate) channels: PeerChannels,
    data_dir: Arc<Mutex<DataDir>>,
    /// The data dir's path, for the free-space watch and messages.
    data_path: PathBuf,
    store: Arc<Store>,
    min_free: u64,
    /// Why the data dir's filesystem is below the floor, while it is.
    disk_low: watch::Sender<Option<String>>,
    removed: AtomicBool,
    reader: StateReader,
    log: LogStore,
    events: broadcast::Sender<AppliedEvent>,
    pub(crate) request_timeout: Duration,
    max_voters: usize,
    shutdown: watch::Sender<bool>,
    shared_writes: mpsc::UnboundedSender<SharedWrite>,
    reads: mpsc::UnboundedSender<ReadWaiter>,
    /// Why Raft stopped by itself (the application's apply or the storage
    /// failed), once it has.
    failure: watch::Sender<Option<Failure>>,
    /// Why the node takes no writes: the failure, else the low disk.
    problem: watch::Sender<Option<String>>,
    /// Removal notices not yet checked with the leader: how many, and the
    /// last sender (its id and address).
    removal_notices: Mutex<(usize, NodeId, String)>,
    /// When this node last heard from a leader whose vote is not older than
    /// its own (or started, or stood): see [`ClusterNode::spawn_election_watchdog`].
    leader_contact: Mutex<Instant>,
    /// Set while this node campaigns to outrun a candidate with a shorter
    /// log: see [`ClusterNode::outrun_candidate`].
    outrunning: AtomicBool,
    /// Wakes the task that checks removal notices with the leader.
    check_removal: Notify,
    /// Held by each membership change this node proposes (joins, removals,
    /// promotions), one at a time: openraft changes a membership in two
    /// steps, and another change between them would leave the cluster in
    /// the joint config, where the promoter promotes no one.
    membership_changes: tokio::sync::Mutex<()>,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<NodeInner>,
}

/// Refuses a node that has lost the Raft state its data dir says it had:
/// node.json records (`raft_state`) that the database once held a vote or a
/// log entry, but now it holds neither (`db/` wiped or replaced). Resuming
/// would let it vote again in a term it already voted in, or count towards a
/// quorum for entries it no longer has, which breaks Raft's safety.
///
/// Legitimately empty databases are not refused, because `raft_state` is set
/// only before the first vote or append is written: a node that crashed
/// after recording its cluster id at bootstrap but before `initialize`
/// wrote the first entry, and a joining learner that has not yet received
/// anything from the leader, hold no promise to anyone. A data dir written
/// before `raft_state` existed gains it here, at its first start that finds
/// Raft state.
pub(crate) fn check_raft_state(
    log: &LogStore,
    data_dir: &Mutex<DataDir>,
    cluster_id: &str,
) -> Result<(), ClusterError> {
    let has_state = log
        .has_raft_state()
        .map_err(|e| ClusterError::Internal(format!("cannot read the Raft state: {e}")))?;
    let mut data_dir = data_dir.lock().unwrap_or_else(|p| p.into_inner());
    if has_state {
        return data_dir.mark_raft_state();
    }
    if data_dir.identity().raft_state {
        let node_id = data_dir.identity().node_id;
        return Err(ClusterError::DataDir {
            path: data_dir.path().display().to_string(),
            reason: format!(
                "node {node_id} of cluster {cluster_id} has lost its Raft state (no vote, no log): it cannot rejoin \
                 under its old id; {}",
                crate::check::way_back(data_dir.path(), node_id)
            ),
        });
    }
    Ok(())
}

/// A fresh cluster id: 16 hex digits.
pub fn new_cluster_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl ClusterNode {
    /// Opens the node's storage, starts Raft and the peer server on
    /// `peer_listener` (bound by the caller, so it can name its own flag). The data
    /// dir must already carry the cluster id (set it before calling, at
    /// bootstrap or join). A fresh node then waits to be initialized
    /// ([`ClusterNode::initialize`]) or added by a leader.
    pub async fn start(
        config: ClusterConfig,
        data_dir: DataDir,
        peer_listener: tokio::net::TcpListener,
        app: Arc<dyn StateMachineApp>,
    ) -> Result<ClusterNode, ClusterError> {
        let identity = data_dir.identity().clone();
        let Some(cluster_id) = identity.cluster_id.clone() else {
            return Err(ClusterError::Internal("the data dir has no cluster id yet".into()));
        };
        if identity.removed {
            return Err(ClusterError::Removed {
                node_id: identity.node_id,
            });
        }
        let internal = |e: String| ClusterError::Internal(e);
        let damaged = |what: &str| check::damaged(data_dir.path(), identity.node_id, &cluster_id, what);
        let store = Store::open(&data_dir.db_path(), &config.tables)
            .and_then(|store| check::verify_raft_families(&store).map(|()| store))
            .map_err(|e| {
                if e.kind() == rocksdb::ErrorKind::Corruption {
                    damaged(e.as_ref())
                } else {
                    ClusterError::DataDir {
                        path: data_dir.db_path().display().to_string(),
                        reason: format!("cannot open the database: {e}"),
                    }
                }
            })?;
        let store = Arc::new(store);
        let data_path = data_dir.path().to_path_buf();
        let (events, _) = broadcast::channel(4096);
        let sm = StateMachineStore::open(store.clone(), app, events.clone(), data_dir.snapshot_path())
            .map_err(|e| internal(e.to_string()))?;
        let reader = sm.reader();
        let identity_path = data_dir.path().display().to_string();
        let data_dir = Arc::new(Mutex::new(data_dir));
        let log = LogStore::new(store.clone(), data_dir.clone()).map_err(|reason| ClusterError::DataDir {
            path: identity_path.clone(),
            reason,
        })?;
        check_raft_state(&log, &data_dir, &cluster_id)?;
        // Entries fsynced (and so acknowledged) are missing: the WAL was cut.
        if let Some((last, mark)) = log
            .ends_before_mark()
            .map_err(|e| internal(format!("cannot read the Raft log: {e}")))?
        {
            let dir = data_dir.lock().unwrap_or_else(|p| p.into_inner());
            return Err(check::damaged(
                dir.path(),
                identity.node_id,
                &cluster_id,
                &check::cut_short(last, mark),
            ));
        }
        let log_for_reads = log.clone();

        let heartbeat = config.heartbeat.as_millis().max(1) as u64;
        let election = config.election_timeout.as_millis().max(heartbeat as u128 * 3) as u64;
        let raft_config = Config {
            cluster_name: cluster_id.clone(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election + election / 2,
            install_snapshot_timeout: 5000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold.max(1)),
            max_in_snapshot_log_to_keep: config.snapshot_threshold / 2,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| internal(format!("raft configuration: {e}")))?;

        let channels = PeerChannels::new(&cluster_id, identity.node_id, config.tls.as_ref());
        let network = PeerNetwork {
            channels: channels.clone(),
        };
        let raft = Raft::new(identity.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| internal(format!("cannot start raft: {e}")))?;
        let (shutdown, _) = watch::channel(false);
        let (shared_writes, waiting) = mpsc::unbounded_channel();
        let (reads, waiting_reads) = mpsc::unbounded_channel();
        let (failure, _) = watch::channel(None);
        let (disk_low, _) = watch::channel(None);
        let (problem, _) = watch::channel(None);
        let inner = Arc::new(NodeInner {
            id: identity.node_id,
            cluster_id,
            info: config.advertise.clone(),
            raft,
            channels,
            data_dir,
            data_path,
            store,
            min_free: config.min_free_bytes,
            disk_low,
            problem,
            removed: AtomicBool::new(false),
            reader,
            log: log_for_reads,
            events,
            request_timeout: config.request_timeout,
            max_voters: config.max_voters.max(1),
            shutdown,
            shared_writes,
            reads,
            failure,
            removal_notices: Mutex::new((0, 0, String::new())),
            leader_contact: Mutex::new(Instant::now()),
            outrunning: AtomicBool::new(false),
            check_removal: Notify::new(),
            membership_changes: tokio::sync::Mutex::new(()),
        });
        let node = ClusterNode { inner };
        let peer = peer_listener.local_addr().ok();
        node.spawn_peer_server(peer_listener, config.tls.as_ref())?;
        node.spawn_promoter();
        node.spawn_role_logger();
        node.spawn_write_batcher(waiting);
        node.spawn_read_batcher(waiting_reads);
        node.spawn_election_watchdog();
        node.spawn_failure_watch();
        node.spawn_removal_checker();
        node.spawn_disk_watch();
        info!(node_id = node.inner.id, cluster_id = %node.inner.cluster_id, peer = ?peer, "raft started");
        Ok(node)
    }

    fn spawn_peer_server(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<&opsd_proto::transport::Tls>,
    ) -> Result<(), ClusterError> {
        let server = opsd_proto::transport::tls_server(tls)
            .map_err(|e| ClusterError::Internal(format!("the peer port's TLS configuration: {e}")))?;
        let service = PeerServer::new(PeerService::new(self.clone()))
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let mut stop = self.inner.shutdown.subscribe();
        let peer_only = crate::peer_port::PeerOnly::new(&self.inner.info, tls.is_some());
        tokio::spawn(async move {
            let result = server
                .layer(peer_only)
                .add_service(service)
                .serve_with_incoming_shutdown(opsd_proto::transport::incoming(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                warn!("peer server stopped: {e}");
            }
        });
        Ok(())
    }

    /// On the leader, promotes caught-up learners to voters, one at a time,
    /// while there are fewer voters than the limit.
    fn spawn_promoter(&self) {
        let node = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(PROMOTE_EVERY) => {}
                }
                if let Some(id) = node.learner_to_promote() {
                    let _one_at_a_time = node.inner.membership_changes.lock().await;
                    let res = node
                        .inner
                        .raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                        .await;
                    match res {
                        Ok(_) => info!(node_id = id, "promoted learner to voter"),
                        Err(e) => warn!(node_id = id, "could not promote learner: {e}"),
                    }
                }
            }
        });
    }

    /// The term this node leads, or `None` when it is not the leader, kept
    /// current: work that only the leader does (driving runs) follows it.
    pub fn leadership(&self) -> watch::Receiver<Option<u64>> {
        let mut metrics = self.inner.raft.metrics();
        let is_leader = |m: &openraft::RaftMetrics<NodeId, crate::types::NodeInfo>| {
            (m.state == ServerState::Leader).then_some(m.current_term)
        };
        let (tx, rx) = watch::channel(is_leader(&metrics.borrow_and_update()));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                let now = is_leader(&metrics.borrow_and_update());
                tx.send_if_modified(|v| std::mem::replace(v, now) != now);
            }
        });
        rx
    }

    /// Proposes the shared writes waiting on this node, as many as are
    /// waiting (up to [`MAX_SHARED_WRITES`]) in one entry, with up to
    /// [`SHARED_ENTRIES_IN_FLIGHT`] entries on their way at once: openraft
    /// 0.9's leader fsyncs an entry before it sends it to the followers, so
    /// with one entry at a time every batch paid two fsyncs in a row (the
    /// leader's, then the followers'); with two, the leader's fsync of the
    /// next entry overlaps the followers' fsync of the last.
    fn spawn_write_batcher(&self, mut waiting: mpsc::UnboundedReceiver<SharedWrite>) {
        let node = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        let slots = Arc::new(tokio::sync::Semaphore::new(SHARED_ENTRIES_IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    w = waiting.recv() => match w { Some(w) => w, None => return },
                    _ = stop.wait_for(|s| *s) => return,
                };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_SHARED_WRITES {
                    match waiting.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                let node = node.clone();
                tokio::spawn(async move {
                    node.write_batch(batch).await;
                    drop(slot);
                });
            }
        });
    }

    /// Proposes `batch` as one entry and answers each of its writes.
    async fn write_batch(&self, batch: Vec<SharedWrite>) {
        let (commands, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.command, w.answer)).unzip();
        match self.inner.raft.client_write(Command(commands)).await {
            Ok(resp) => {
                for (answer, response) in answers.into_iter().zip(resp.data.0) {
                    let _ = answer.send(Ok((resp.log_id.index, response)));
                }
            }
            Err(e) => {
                let error = match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.not_leader(f.leader_id),
                    // Raft stopped with the entry appended: it may have committed.
                    e => ClusterError::Interrupted {
                        what: "the write".into(),
                        reason: fatal(e).to_string(),
                    },
                };
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }

    /// Answers the linearizable reads waiting on this node (as leader) with
    /// one leadership check for all of them, one check at a time: while a
    /// check is out, the reads arriving meanwhile wait for the next. A read
    /// is answered only by a check that started after it arrived, so the
    /// index it gets covers every write acknowledged before the read was
    /// asked (openraft's check sends a round of heartbeats of its own per
    /// call; without this, every read paid one).
    fn spawn_read_batcher(&self, mut waiting: mpsc::UnboundedReceiver<ReadWaiter>) {
        let node = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                let first = tokio::select! {
                    w = waiting.recv() => match w { Some(w) => w, None => return },
                    _ = stop.wait_for(|s| *s) => return,
                };
                batch.push(first);
                while let Ok(w) = waiting.try_recv() {
                    batch.push(w);
                }
                // A check waits one heartbeat interval for the quorum's answers;
                // on a busy machine that can pass with the leader still leading.
                let mut checks = 0;
                let answer = match loop {
                    checks += 1;
                    match node.inner.raft.get_read_log_id().await {
                        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) if checks < READ_CHECKS => {}
                        result => break result,
                    }
                } {
                    Ok((read, _)) => Ok(read.map(|l| l.index).unwrap_or(0)),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(node.not_leader(f.leader_id))
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(ClusterError::NoLeader {
                        waited_ms: node.inner.request_timeout.as_millis() as u64,
                        detail: format!("the leader cannot reach a quorum: {q}"),
                    }),
                    Err(e) => Err(fatal(e)),
                };
                for w in batch.drain(..) {
                    let _ = w.send(answer.clone());
                }
            }
        });
    }

    /// Notes that a leader with `vote` reached this node (as an append or a
    /// snapshot arrives, and again once it is taken), unless this node has
    /// moved on to a newer vote.
    pub(crate) fn heard_from_leader(&self, vote: &openraft::Vote<NodeId>) {
        if *vote >= self.inner.raft.metrics().borrow().vote {
            self.reset_leader_contact();
        }
    }

    /// This node refused its vote to a candidate at `term` whose log is
    /// shorter than its own. openraft 0.9 moves a node's term only when it
    /// grants a vote, so this node, which can win where that candidate
    /// cannot, would next stand in a term the candidate already holds (and
    /// voted itself in) and lose; when the candidate's timer keeps firing
    /// first, no one is ever elected (seen in the fault suite: two live
    /// voters of three, a minute without a leader). So a voter that knows
    /// no leader stands at once, and if that campaign ends without a leader
    /// in a term not above the candidate's (it learnt the candidate's term
    /// from its refusal), once more: the second is above the candidate's
    /// term, and the candidate grants a longer log.
    pub(crate) fn outrun_candidate(&self, term: u64) {
        if self.inner.outrunning.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        let campaign = Duration::from_millis(2 * node.inner.raft.config().heartbeat_interval);
        tokio::spawn(async move {
            let metrics = node.inner.raft.metrics();
            for _ in 0..2 {
                let (stand, before) = {
                    let m = metrics.borrow();
                    let stand = node.may_stand(&m) && m.current_leader.is_none() && m.current_term <= term;
                    (stand, m.current_term)
                };
                if !stand {
                    break;
                }
                info!(
                    node_id = node.inner.id,
                    term, "refused a candidate with a shorter log: standing to outrun it"
                );
                let _ = node.inner.raft.trigger().elect().await;
                // Until the campaign is decided: a leader, or back to follower.
                let _ = node
                    .inner
                    .raft
                    .wait(Some(campaign))
                    .metrics(
                        |m| {
                            m.current_term > before && (m.current_leader.is_some() || m.state != ServerState::Candidate)
                        },
                        "the campaign to end",
                    )
                    .await;
            }
            node.inner.outrunning.store(false, Ordering::SeqCst);
        });
    }

    /// Whether this node may stand for election on its own: a voter whose
    /// disk is not low and that was not removed (openraft leaves the others
    /// alone too).
    fn may_stand(&self, m: &RaftMetrics<NodeId, NodeInfo>) -> bool {
        m.membership_config.membership().voter_ids().any(|v| v == self.inner.id)
            && self.inner.disk_low.borrow().is_none()
            && !self.is_removed()
    }

    fn reset_leader_contact(&self) {
        *self.inner.leader_contact.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Starts the elections openraft 0.9 starts late or repeats.
    ///
    /// A follower whose leader went silent: openraft stands only once the
    /// leader's lease (the maximum election timeout) and then the node's own
    /// election timeout have passed since the leader's last message, and it
    /// draws that timeout once, at start, and looks at it on a tick of 1.5
    /// heartbeats; so a dead leader was replaced after 2.5 to 3.5 timeouts,
    /// and by how much depended on draws made at start. A voter that has
    /// heard nothing from its leader for the lease plus one to two
    /// heartbeats (drawn afresh each time) stands itself: the other voters'
    /// leases have lapsed by then (they heard the same last heartbeat), so
    /// they can grant the vote.
    ///
    /// A split vote: two survivors whose campaigns start within a message's
    /// flight of each other split the vote, and with openraft's fixed draws
    /// can do so again at every round. A voter that has known no leader for
    /// a whole timeout in one term (it stood and did not win, or voted and
    /// heard nothing from the winner) stands again after a fresh random
    /// delay, so the next campaigns start apart. A new term starts the wait
    /// again: a node that has just voted gives the winner its time to say so.
    ///
    /// A node that may not lead (its disk is low, it was removed) is left
    /// alone, as openraft leaves it.
    fn spawn_election_watchdog(&self) {
        let node = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        let config = self.inner.raft.config().clone();
        let heartbeat = Duration::from_millis(config.heartbeat_interval);
        let lease = Duration::from_millis(config.election_timeout_max);
        let spread = config.election_timeout_min;
        let silence_limit = move || lease + heartbeat + heartbeat.mul_f64(rand::random::<f64>());
        tokio::spawn(async move {
            let metrics = node.inner.raft.metrics();
            // The term in which this node has known no leader, and since when.
            let mut leaderless: Option<(u64, Instant)> = None;
            // The leader this node follows, and the silence after which it stands.
            let mut following: Option<(u64, NodeId)> = None;
            let mut limit = silence_limit();
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(heartbeat / 5) => {}
                }
                let (may_stand, term, leader, state) = {
                    let m = metrics.borrow();
                    (node.may_stand(&m), m.current_term, m.current_leader, m.state)
                };
                if !may_stand {
                    (leaderless, following) = (None, None);
                    continue;
                }
                match leader {
                    Some(leader) if leader != node.inner.id && state == ServerState::Follower => {
                        leaderless = None;
                        if following != Some((term, leader)) {
                            following = Some((term, leader));
                            node.reset_leader_contact();
                        }
                        let silent = node
                            .inner
                            .leader_contact
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .elapsed();
                        if silent > limit {
                            info!(
                                node_id = node.inner.id,
                                term,
                                leader,
                                silent_ms = silent.as_millis() as u64,
                                "no word from the leader for its lease and more: standing for election"
                            );
                            let _ = node.inner.raft.trigger().elect().await;
                            node.reset_leader_contact();
                            limit = silence_limit();
                        }
                        continue;
                    }
                    Some(_) => {
                        (leaderless, following) = (None, None);
                        continue;
                    }
                    None => following = None,
                }
                let since = match leaderless {
                    Some((t, since)) if t == term => since,
                    _ => leaderless.insert((term, Instant::now())).1,
                };
                if since.elapsed() < lease {
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..spread))).await;
                let still = {
                    let m = metrics.borrow();
                    m.current_leader.is_none() && m.current_term == term
                };
                if still {
                    info!(
                        node_id = node.inner.id,
                        term,
                        "no leader for a whole election timeout in this term: standing again after a fresh random delay"
                    );
                    let _ = node.inner.raft.trigger().elect().await;
                }
                leaderless = None;
            }
        });
    }

    /// Watches for Raft stopping by itself: apply or the storage failed, and
    /// this node can no longer follow the log. It is published to
    /// [`ClusterNode::failed`], so the process stops (and says why) rather
    /// than serve a state that no longer moves.
    fn spawn_failure_watch(&self) {
        self.spawn_damage_watch();
        let node = self.clone();
        let mut metrics = self.inner.raft.metrics();
        tokio::spawn(async move {
            let raft_error = loop {
                let running = metrics.borrow_and_update().running_state.clone();
                match running {
                    Ok(()) => {}
                    Err(openraft::error::Fatal::Stopped) => return,
                    Err(e) => break e.to_string(),
                }
                if metrics.changed().await.is_err() {
                    let last = metrics.borrow().running_state.clone();
                    match last {
                        Err(openraft::error::Fatal::Stopped) => return,
                        Err(e) => break e.to_string(),
                        // The core's task ended without saying why: a panic, unless we stopped it.
                        Ok(()) if *node.inner.shutdown.borrow() || node.is_removed() => return,
                        Ok(()) => break "raft stopped unexpectedly".to_string(),
                    }
                }
            };
            // A failed write to the data dir is what stopped Raft if one
            // was recorded; otherwise it was the application's apply.
            let failure = match node.inner.store.write_error() {
                Some(e) => Failure {
                    reason: format!(
                        "{} at {}: {e}",
                        if disk::is_no_space(&e) {
                            "disk full"
                        } else {
                            "storage failed"
                        },
                        node.inner.data_path.display()
                    ),
                    storage: true,
                },
                None => Failure {
                    reason: raft_error,
                    storage: false,
                },
            };
            // Not logged here: a failed write was logged as it failed, and
            // the process that owns the node says why it stops once.
            node.inner.failure.send_replace(Some(failure));
            node.refresh_problem();
        });
    }

    /// Watches for damage met by a read of the database (a failed block
    /// checksum in a table, say): the node stops, as when Raft stops, rather
    /// than lead or serve while every read of the damaged part fails.
    fn spawn_damage_watch(&self) {
        let node = self.clone();
        let mut damage = self.inner.log.damage();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            let what = tokio::select! {
                d = damage.wait_for(|d| d.is_some()) => match d {
                    Ok(d) => d.clone().unwrap_or_default(),
                    Err(_) => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            let why = {
                let dir = node.inner.data_dir.lock().unwrap_or_else(|p| p.into_inner());
                check::damaged(dir.path(), node.inner.id, &node.inner.cluster_id, &what).to_string()
            };
            node.inner.failure.send_if_modified(|f| {
                if f.is_some() {
                    return false;
                }
                *f = Some(Failure {
                    reason: why,
                    storage: false,
                });
                true
            });
            node.refresh_problem();
        });
    }

    /// Measures the free space of the data dir's filesystem every second
    /// against the floor: below it, the node refuses writes (here and, as a
    /// follower, appends from the leader, which retries them) and, unless it
    /// is the cluster's only voter, stands for no election, until there is
    /// room again.
    fn spawn_disk_watch(&self) {
        if self.inner.min_free == 0 {
            return;
        }
        let node = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                let path = node.inner.data_path.clone();
                let floor = node.inner.min_free;
                let low = tokio::task::spawn_blocking(move || disk::below_floor(&path, floor))
                    .await
                    .unwrap_or(None);
                let was_low = node.inner.disk_low.borrow().is_some();
                match (&low, was_low) {
                    (Some(why), false) => {
                        error!(
                            node_id = node.inner.id,
                            "{why}: this node takes no writes until it has room again"
                        );
                    }
                    (None, true) => {
                        info!(
                            node_id = node.inner.id,
                            path = %node.inner.data_path.display(),
                            "the disk has room again: this node takes writes again"
                        );
                    }
                    _ => {}
                }
                // A node that cannot take writes should not lead, unless no
                // other node could: the single voter of a cluster. It stands
                // for no election and, leading, sends no heartbeats, so its
                // followers time out and elect one of their own.
                let voters = node.members().iter().filter(|m| m.voter).count();
                let may_lead = low.is_none() || voters <= 1;
                node.inner.raft.runtime_config().elect(may_lead);
                node.inner.raft.runtime_config().heartbeat(may_lead);
                node.inner.disk_low.send_replace(low);
                node.refresh_problem();
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(DISK_CHECK_EVERY) => {}
                }
            }
        });
    }

    /// Publishes why the node takes no writes: the failure, else the low disk.
    fn refresh_problem(&self) {
        let now = match &*self.inner.failure.borrow() {
            Some(f) => Some(f.reason.clone()),
            None => self.inner.disk_low.borrow().clone(),
        };
        self.inner.problem.send_if_modified(|p| {
            let changed = *p != now;
            *p = now;
            changed
        });
    }

    /// Why this node takes no writes now, kept current: `None` while it
    /// does. For health checks.
    pub fn problem(&self) -> watch::Receiver<Option<String>> {
        self.inner.problem.subscribe()
    }

    /// Why the data dir's filesystem is below the floor, while it is.
    pub(crate) fn disk_low(&self) -> Option<String> {
        self.inner.disk_low.borrow().clone()
    }

    /// Whether the data dir's filesystem has at least the floor free now
    /// (measured, not the last check's result).
    pub fn disk_has_room(&self) -> bool {
        disk::below_floor(&self.inner.data_path, self.inner.min_free).is_none()
    }

    /// Refuses a write while Raft has stopped or the disk is below the floor.
    fn check_writable(&self) -> Result<(), ClusterError> {
        self.check_running()?;
        match self.disk_low() {
            Some(why) => Err(ClusterError::Storage {
                reason: format!("{why}; this node takes no writes until it has room again"),
            }),
            None => Ok(()),
        }
    }

    /// Refuses any request once Raft has stopped by itself.
    fn check_running(&self) -> Result<(), ClusterError> {
        match &*self.inner.failure.borrow() {
            Some(f) => Err(ClusterError::Storage {
                reason: format!("{}; raft stopped on this node", f.reason),
            }),
            None => Ok(()),
        }
    }

    /// Waits until Raft stops by itself (not by [`ClusterNode::shutdown`] or a
    /// removal) and returns why: the node can no longer apply the log, and
    /// the process should exit with an error.
    pub async fn failed(&self) -> Failure {
        let mut failure = self.inner.failure.subscribe();
        let why = match failure.wait_for(|f| f.is_some()).await {
            Ok(why) => why.clone(),
            // The node is gone; nothing failed that anyone waits for.
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Logs each change of leader or term, since openraft's own logs are off
    /// by default. The first state Raft publishes is what it restored from
    /// the data dir (a node that led before it stopped starts as leader of
    /// its old term, and steps down at once if the cluster has moved on), so
    /// it is logged as that rather than as a role this node holds now; the
    /// next change after it is logged as the role, even if the same.
    fn spawn_role_logger(&self) {
        let mut metrics = self.inner.raft.metrics();
        tokio::spawn(async move {
            let mut last = None;
            let mut restored = false;
            while metrics.changed().await.is_ok() {
                let now = {
                    let m = metrics.borrow();
                    (m.current_term, m.current_leader, m.state)
                };
                let (term, leader, state) = now;
                if !restored {
                    restored = true;
                    if term > 0 {
                        info!(term, leader = ?leader, "restored state: term {term}, was {}", restored_role(state));
                        continue;
                    }
                }
                if last != Some(now) {
                    info!(term, leader = ?leader, state = ?state, "raft role");
                    last = Some(now);
                }
            }
        });
    }

    fn learner_to_promote(&self) -> Option<NodeId> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return None;
        }
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return None;
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= self.inner.max_voters {
            return None;
        }
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.as_ref()?;
        let learner = membership.nodes().map(|(id, _)| *id).find(|id| {
            !voters.contains(id)
                && replication
                    .get(id)
                    .and_then(|l| l.as_ref())
                    .is_some_and(|l| l.index + PROMOTE_LAG >= last)
        });
        learner
    }

    /// Makes this node the single voter of a new cluster. Harmless if the
    /// node was initialized already (a bootstrap interrupted and re-run).
    pub async fn initialize(&self) -> Result<(), ClusterError> {
        let members = BTreeMap::from([(self.inner.id, self.inner.info.clone())]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ClusterError::Internal(format!("cannot initialize the cluster: {e}"))),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// Reads the applied state.
    pub fn reader(&self) -> &StateReader {
        &self.inner.reader
    }

    /// Events published as entries are applied.
    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEvent> {
        self.inner.events.subscribe()
    }

    /// Whether this node was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        self.inner.removed.load(Ordering::SeqCst)
    }

    /// The index of the last entry in this node's log, read from the log
    /// itself. Entries up to it were written before this call: the engine uses it to
    /// tell work an earlier run of this process started from its own.
    pub fn last_log_index(&self) -> Result<u64, ClusterError> {
        let state = self
            .inner
            .log
            .log_state()
            .map_err(|e| ClusterError::Internal(format!("reading the log state: {e}")))?;
        Ok(state.last_log_id.map(|l| l.index).unwrap_or(0))
    }

    /// Whether this node is in its effective membership (what its log and
    /// state say, asked of Raft itself: right after start the published
    /// metrics may not show the stored membership yet).
    pub async fn is_member(&self) -> bool {
        let id = self.inner.id;
        self.inner
            .raft
            .with_raft_state(move |st| {
                st.membership_state
                    .effective()
                    .membership()
                    .nodes()
                    .any(|(n, _)| *n == id)
            })
            .await
            .unwrap_or(false)
    }

    /// Replicates a command and returns its log index and the apply answer.
    pub async fn write(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), ClusterError> {
        match self.leader_request(LeaderRequest::Write(command)).await? {
            LeaderResponse::Written { index, response } => Ok((index, response)),
            other => Err(ClusterError::Internal(format!(
                "unexpected answer to a write: {other:?}"
            ))),
        }
    }

    /// Replicates a command that may share its log entry (and so its index)
    /// with other such commands, proposed at the same time: under load, one
    /// fsync and one replication round then carry many writes. For commands
    /// whose apply does not rely on having an index of their own.
    pub async fn write_shared(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), ClusterError> {
        match self.leader_request(LeaderRequest::WriteShared(command)).await? {
            LeaderResponse::Written { index, response } => Ok((index, response)),
            other => Err(ClusterError::Internal(format!(
                "unexpected answer to a write: {other:?}"
            ))),
        }
    }

    /// Waits until this node's state includes every write committed before
    /// the call (a linearizable read may then be served locally).
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let index = match self.leader_request(LeaderRequest::ReadIndex).await? {
            LeaderResponse::ReadIndex { index } => index,
            other => {
                return Err(ClusterError::Internal(format!(
                    "unexpected answer to a read index: {other:?}"
                )))
            }
        };
        if let Some(why) = self.disk_low() {
            let applied = self.inner.raft.metrics().borrow().last_applied.map(|l| l.index);
            if applied.unwrap_or(0) < index {
                return Err(ClusterError::Storage {
                    reason: format!(
                        "{why}; this node takes no entries from the leader, so it cannot catch up for a \
                         linearizable read (a stale read, or another node, can serve it)"
                    ),
                });
            }
        }
        if self
            .inner
            .raft
            .metrics()
            .borrow()
            .last_applied
            .is_some_and(|l| l.index >= index)
        {
            return Ok(());
        }
        let remaining = self.inner.request_timeout.saturating_sub(started.elapsed());
        self.inner
            .raft
            .wait(Some(remaining.max(Duration::from_millis(1))))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::Timeout {
                what: format!("catching up to the leader's commit index {index} for a linearizable read"),
                waited_ms: self.inner.request_timeout.as_millis() as u64,
            })
    }

    /// Adds a node as a learner (forwarded to the leader).
    pub async fn add_node(&self, id: NodeId, info: NodeInfo, cluster_id: String) -> Result<Vec<Member>, ClusterError> {
        match self
            .leader_request(LeaderRequest::AddNode { id, info, cluster_id })
            .await?
        {
            LeaderResponse::Members(m) => Ok(m),
            other => Err(ClusterError::Internal(format!(
                "unexpected answer to a join: {other:?}"
            ))),
        }
    }

    /// Removes a node from the cluster (forwarded to the leader).
    pub async fn remove_node(&self, id: NodeId) -> Result<Vec<Member>, ClusterError> {
        match self.leader_request(LeaderRequest::RemoveNode { id }).await? {
            LeaderResponse::Members(m) => Ok(m),
            other => Err(ClusterError::Internal(format!(
                "unexpected answer to a removal: {other:?}"
            ))),
        }
    }

    /// The leader this node knows of (as [`ClusterNode::status`] has it).
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        known_leader(&self.inner.raft.metrics().borrow())
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let members = members_of(&m.membership_config);
        let unconfirmed = unconfirmed_leader(&m);
        let leader = known_leader(&m);
        let voter = members.iter().any(|x| x.id == self.inner.id && x.voter);
        let failure = self.inner.failure.borrow().clone();
        let role = if self.is_removed() {
            Role::Removed
        } else if failure.is_some() {
            Role::Stopped
        } else {
            match m.state {
                ServerState::Leader if unconfirmed => Role::Candidate,
                ServerState::Leader => Role::Leader,
                ServerState::Candidate => Role::Candidate,
                ServerState::Follower if voter => Role::Follower,
                ServerState::Follower | ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Stopped,
            }
        };
        ClusterStatus {
            node_id: self.inner.id,
            cluster_id: self.inner.cluster_id.clone(),
            leader,
            term: m.current_term,
            role,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            members,
            problem: self.inner.problem.borrow().clone(),
        }
    }

    /// Stops Raft and the peer server.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!("raft did not shut down cleanly: {e}");
        }
        // Other threads (the engine's) may still hold the database when the
        // process exits; its background flushes and compactions must not run
        // into the library's teardown.
        self.inner.log.stop_background_work();
    }

    /// Marks this node removed, for good: persisted, and Raft stopped.
    pub(crate) fn mark_removed(&self) {
        if self.inner.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        warn!(
            node_id = self.inner.id,
            "this node was removed from the cluster; it stops serving"
        );
        if let Err(e) = self
            .inner
            .data_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark_removed()
        {
            warn!("could not record the removal in the data dir: {e}");
        }
        let raft = self.inner.raft.clone();
        tokio::spawn(async move {
            let _ = raft.shutdown().await;
        });
    }

    /// Takes note of a peer saying this node was removed. A notice is a hint,
    /// not an order: anyone who can reach the peer port can send one, and
    /// being removed is final. The node asks its own leader (the one its Raft
    /// follows, never an address from the notice) in the background, and
    /// only if the leader, having confirmed its leadership with a quorum,
    /// answers that this node is no longer a member does it stop serving.
    /// Notices that arrive while a check runs are covered by one more check.
    pub(crate) fn removal_notice(&self, from: NodeId, addr: String) {
        if self.is_removed() {
            return;
        }
        {
            let mut notices = self.inner.removal_notices.lock().unwrap_or_else(|p| p.into_inner());
            *notices = (notices.0 + 1, from, addr);
        }
        self.inner.check_removal.notify_one();
    }

    /// Checks removal notices with the leader, one check at a time.
    fn spawn_removal_checker(&self) {
        let node = self.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = node.inner.check_removal.notified() => {}
                }
                let (count, from, addr) =
                    std::mem::take(&mut *node.inner.removal_notices.lock().unwrap_or_else(|p| p.into_inner()));
                if count == 0 || node.is_removed() {
                    continue;
                }
                // A forwarded read index: the leader confirms its leadership with
                // a quorum and answers Removed to a node it does not count as a
                // member (`check_origin`); leader_request then marks this node removed.
                let why = match node.leader_request(LeaderRequest::ReadIndex).await {
                    Err(ClusterError::Removed { node_id }) if node_id == node.inner.id => continue,
                    Ok(_) => "the leader counts this node as a member".to_string(),
                    Err(e) => format!("the leader could not confirm it: {e}"),
                };
                warn!(
                    node_id = node.inner.id,
                    "ignored {count} removal notice(s), the last from node {from} at {addr}: {why}"
                );
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(REMOVAL_CHECK_PAUSE) => {}
                }
            }
        });
    }

    /// Runs a request on the leader: here if this node leads, else forwarded.
    /// Retries while there is no leader or it moved, until the timeout.
    async fn leader_request(&self, req: LeaderRequest) -> Result<LeaderResponse, ClusterError> {
        if req.writes() {
            self.check_writable()?;
        }
        self.check_running()?;
        let started = Instant::now();
        let deadline = started + self.inner.request_timeout;
        // Where to ask when this node's Raft knows no leader (an election is
        // on, or this node was cut off or removed and stands alone): the
        // leader another member named last, else each member in turn, which
        // names its leader in its refusal.
        let mut named: Option<(NodeId, NodeInfo)> = None;
        let mut asked = 0usize;
        let mut hops = 0;
        loop {
            if self.is_removed() {
                return Err(ClusterError::Removed { node_id: self.inner.id });
            }
            let leader = self.leader().or_else(|| named.take()).or_else(|| {
                let others: Vec<_> = self.members().into_iter().filter(|m| m.id != self.inner.id).collect();
                asked += 1;
                others.get(asked % others.len().max(1)).map(|m| (m.id, m.info.clone()))
            });
            let result = match &leader {
                Some((id, _)) if *id == self.inner.id => {
                    self.serve_leader_request(self.inner.id, req.clone(), deadline).await
                }
                Some((id, info)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    self.inner
                        .channels
                        .call_leader(*id, info, &req, remaining.max(Duration::from_millis(1)))
                        .await
                }
                None => Err(ClusterError::NoLeader {
                    waited_ms: 0,
                    detail: "no leader is known to this node".into(),
                }),
            };
            match result {
                Err(ClusterError::Removed { node_id }) if node_id == self.inner.id => {
                    self.mark_removed();
                    return Err(ClusterError::Removed { node_id });
                }
                Err(ClusterError::NotLeader { leader: Some(next), .. })
                    if Instant::now() + Duration::from_millis(50) < deadline =>
                {
                    // Straight to the named leader, unless names went round.
                    hops += 1;
                    if hops > 2 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    named = Some(next);
                }
                Err(
                    e @ (ClusterError::NotLeader { .. }
                    | ClusterError::NoLeader { .. }
                    | ClusterError::Unreachable { .. }),
                ) => {
                    if Instant::now() + Duration::from_millis(50) >= deadline {
                        let detail = match e {
                            ClusterError::NoLeader { detail, .. } => detail,
                            e => e.to_string(),
                        };
                        return Err(ClusterError::NoLeader {
                            waited_ms: started.elapsed().as_millis() as u64,
                            detail,
                        });
                    }
                    // Again when this node learns of another leader, or in 50 ms.
                    let asked = leader.map(|l| l.0);
                    let mut metrics = self.inner.raft.metrics();
                    let _ = tokio::time::timeout(
                        Duration::from_millis(50),
                        metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != asked),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }

    /// Serves a request as the leader. `origin` is the node that asked.
    pub(crate) async fn serve_leader_request(
        &self,
        origin: NodeId,
        req: LeaderRequest,
        deadline: Instant,
    ) -> Result<LeaderResponse, ClusterError> {
        let raft = &self.inner.raft;
        let waited = |what: &str| ClusterError::Timeout {
            what: what.to_string(),
            waited_ms: self.inner.request_timeout.as_millis() as u64,
        };
        let remaining = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        if req.writes() {
            self.check_writable()?;
        }
        match req {
            LeaderRequest::Write(cmd) => {
                self.check_origin(origin, deadline).await?;
                match tokio::time::timeout(remaining(), raft.client_write(Command(vec![cmd]))).await {
                    Err(_) => Err(waited("the write")),
                    Ok(Ok(resp)) => Ok(LeaderResponse::Written {
                        index: resp.log_id.index,
                        response: resp.data.0.into_iter().next().unwrap_or_default(),
                    }),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                        Err(self.not_leader(f.leader_id))
                    }
                    // Raft stopped (this node was removed, or is shutting
                    // down) with the write appended: it may have committed.
                    Ok(Err(e)) => Err(ClusterError::Interrupted {
                        what: "the write".into(),
                        reason: fatal(e).to_string(),
                    }),
                }
            }
            LeaderRequest::WriteShared(command) => {
                self.check_origin(origin, deadline).await?;
                let (answer, answered) = oneshot::channel();
                self.inner
                    .shared_writes
                    .send(SharedWrite { command, answer })
                    .map_err(|_| ClusterError::ShuttingDown)?;
                match tokio::time::timeout(remaining(), answered).await {
                    Err(_) => Err(waited("the write")),
                    Ok(Err(_)) => Err(ClusterError::Interrupted {
                        what: "the write".into(),
                        reason: "the node stopped while the write waited".into(),
                    }),
                    Ok(Ok(written)) => written.map(|(index, response)| LeaderResponse::Written { index, response }),
                }
            }
            LeaderRequest::ReadIndex => {
                self.check_origin(origin, deadline).await?;
                let (answer, answered) = oneshot::channel();
                self.inner.reads.send(answer).map_err(|_| ClusterError::ShuttingDown)?;
                match tokio::time::timeout(remaining(), answered).await {
                    Err(_) => Err(waited("confirming leadership for a linearizable read")),
                    Ok(Err(_)) => Err(ClusterError::ShuttingDown),
                    Ok(Ok(index)) => index.map(|index| LeaderResponse::ReadIndex { index }),
                }
            }
            LeaderRequest::AddNode { id, info, cluster_id } => {
                self.check_origin(origin, deadline).await?;
                if !cluster_id.is_empty() && cluster_id != self.inner.cluster_id {
                    return Err(ClusterError::WrongCluster {
                        expected: self.inner.cluster_id.clone(),
                        got: cluster_id,
                    });
                }
                let members = self.members();
                if let Some(existing) = members.iter().find(|m| m.id == id) {
                    if existing.info == info {
                        return Ok(LeaderResponse::Members(members));
                    }
                    return Err(ClusterError::Membership(format!(
                        "node {id} is already a member at {}; remove it before adding it at {info}",
                        existing.info
                    )));
                }
                self.change_membership(ChangeMembers::AddNodes(BTreeMap::from([(id, info)])), true, deadline)
                    .await?;
                info!(node_id = id, "added node as learner");
                Ok(LeaderResponse::Members(self.members()))
            }
            LeaderRequest::Members => {
                self.check_origin(origin, deadline).await?;
                let leader = self.inner.raft.metrics().borrow().current_leader;
                self.leader_members()
                    .map(LeaderResponse::MembersHealth)
                    .ok_or_else(|| self.not_leader(leader))
            }
            LeaderRequest::RemoveNode { id } => {
                self.check_origin(origin, deadline).await?;
                let members = self.members();
                let Some(target) = members.iter().find(|m| m.id == id).cloned() else {
                    return Err(ClusterError::NotMember { node_id: id });
                };
                let change = if target.voter {
                    if members.iter().filter(|m| m.voter).count() == 1 {
                        return Err(ClusterError::Membership(format!(
                            "node {id} is the last voter; a cluster cannot remove its last voter"
                        )));
                    }
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.change_membership(change, false, deadline).await?;
                info!(node_id = id, "removed node from the cluster");
                self.notify_removed(id, target.info);
                Ok(LeaderResponse::Members(self.members()))
            }
        }
    }

    /// Applies a membership change, waiting out one already in progress.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, NodeInfo>,
        retain: bool,
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let _one_at_a_time = match tokio::time::timeout_at(deadline.into(), self.inner.membership_changes.lock()).await
        {
            Ok(guard) => guard,
            Err(_) => {
                return Err(ClusterError::Timeout {
                    what: "the membership change (another was under way)".into(),
                    waited_ms: self.inner.request_timeout.as_millis() as u64,
                })
            }
        };
        loop {
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let res = tokio::time::timeout(remaining, self.inner.raft.change_membership(change.clone(), retain)).await;
            match res {
                Err(_) => {
                    return Err(ClusterError::Timeout {
                        what: "the membership change".into(),
                        waited_ms: self.inner.request_timeout.as_millis() as u64,
                    })
                }
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    return Err(self.not_leader(f.leader_id))
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                )))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(ClusterError::Membership(e.to_string()))
                }
                // Raft stopped with the change appended: it may have committed.
                Ok(Err(e)) => {
                    return Err(ClusterError::Interrupted {
                        what: "the membership change".into(),
                        reason: fatal(e).to_string(),
                    })
                }
            }
        }
    }

    /// Tells a removed node so, in the background and best effort: a node
    /// that misses it learns it when it next forwards a request.
    fn notify_removed(&self, id: NodeId, info: NodeInfo) {
        let node = self.clone();
        tokio::spawn(async move {
            if id == node.inner.id {
                node.mark_removed();
                return;
            }
            let res = node
                .inner
                .channels
                .call::<NodeId, ()>(&info.peer_addr, PeerMethod::Removed, &id, Duration::from_secs(2))
                .await;
            if let Err(e) = res {
                warn!(node_id = id, "could not tell the removed node: {e}");
            }
        });
    }

    /// Refuses requests forwarded by a node that is no longer a member. This
    /// node's view of the membership may be stale (a leader that restarted or
    /// was cut off may not have seen the node join), and telling a node it
    /// was removed is final: so only after confirming the leadership with a
    /// quorum, which means holding every committed membership change.
    async fn check_origin(&self, origin: NodeId, deadline: Instant) -> Result<(), ClusterError> {
        let is_member = || origin == self.inner.id || self.members().iter().any(|m| m.id == origin);
        if is_member() {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.inner.raft.get_read_log_id()).await {
            Ok(Ok(_)) if !is_member() => Err(ClusterError::Removed { node_id: origin }),
            Ok(Ok(_)) => Ok(()),
            // Asked as a member by a node that knows no leader: name it.
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => Err(self.not_leader(f.leader_id)),
            _ => Err(ClusterError::NoLeader {
                waited_ms: 0,
                detail: format!("node {origin} is unknown to this leader, which could not confirm its leadership"),
            }),
        }
    }

    fn not_leader(&self, leader_id: Option<NodeId>) -> ClusterError {
        let leader = leader_id.and_then(|id| self.members().into_iter().find(|m| m.id == id).map(|m| (id, m.info)));
        ClusterError::NotLeader {
            node_id: self.inner.id,
            leader,
        }
    }

    /// The members as the leader sees them: who leads, who answers its
    /// heartbeats (and since when), and how far behind each one is. Asked of
    /// the leader if this node is not it; if the leader cannot be asked (none
    /// is known, it does not answer within 2 s, or it runs an older build),
    /// this node's own view, which says so. A removed node is refused.
    pub async fn members_view(&self) -> Result<MembersView, ClusterError> {
        if self.is_removed() {
            return Err(ClusterError::Removed { node_id: self.inner.id });
        }
        let leader = self.leader();
        let local = |leader_id| MembersView {
            members: self
                .members()
                .into_iter()
                .map(|member| MemberHealth {
                    role: member.role(leader_id),
                    member,
                    contact: Contact::Unknown,
                    matched_index: None,
                    lag: None,
                })
                .collect(),
            leader_id,
            from_leader: false,
        };
        let Some((leader_id, info)) = leader else {
            return Ok(local(None));
        };
        if leader_id == self.inner.id {
            return Ok(match self.leader_members() {
                Some(members) => MembersView {
                    members,
                    leader_id: Some(leader_id),
                    from_leader: true,
                },
                None => local(Some(leader_id)),
            });
        }
        let timeout = self.inner.request_timeout.min(Duration::from_secs(2));
        let asked = self
            .inner
            .channels
            .call_leader::<_, LeaderResponse>(leader_id, &info, &LeaderRequest::Members, timeout)
            .await;
        match asked {
            Ok(LeaderResponse::MembersHealth(members)) => Ok(MembersView {
                members,
                leader_id: Some(leader_id),
                from_leader: true,
            }),
            Err(ClusterError::Removed { node_id }) if node_id == self.inner.id => {
                self.mark_removed();
                Err(ClusterError::Removed { node_id })
            }
            _ => Ok(local(Some(leader_id))),
        }
    }

    /// The members with their contact and lag, if this node leads.
    fn leader_members(&self) -> Option<Vec<MemberHealth>> {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return None;
        }
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.unwrap_or_default();
        let members = members_of(&m.membership_config)
            .into_iter()
            .map(|member| {
                let (contact, matched) = if member.id == self.inner.id {
                    (Contact::Reachable { since_ms: 0 }, last)
                } else {
                    let since_ms = |d: Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
                    let contact = match self.inner.channels.contact(member.id) {
                        None => Contact::Unknown,
                        Some(c) if c.answered => Contact::Reachable {
                            since_ms: since_ms(c.since),
                        },
                        Some(c) => Contact::Unreachable {
                            since_ms: since_ms(c.since),
                        },
                    };
                    let matched = replication.get(&member.id).copied().flatten().map_or(0, |l| l.index);
                    (contact, matched)
                };
                MemberHealth {
                    role: member.role(Some(self.inner.id)),
                    member,
                    contact,
                    matched_index: Some(matched),
                    lag: Some(last.saturating_sub(matched)),
                }
            })
            .collect();
        Some(members)
    }

    /// The applied membership.
    pub fn members(&self) -> Vec<Member> {
        members_of(&self.inner.raft.metrics().borrow().membership_config)
    }

    pub(crate) fn inner(&self) -> &NodeInner {
        &self.inner
    }
}

/// A node that led when it stopped starts again as the leader of its old
/// term, and is one only once a quorum answers it (at once in a single-node
/// cluster; never if the cluster has moved on, and then it steps down).
fn unconfirmed_leader(m: &RaftMetrics<NodeId, NodeInfo>) -> bool {
    m.state == ServerState::Leader && m.millis_since_quorum_ack.is_none()
}

/// The leader `m` knows of, with its addresses. An unconfirmed leader claims
/// no leadership: no leader is known, as to a candidate.
fn known_leader(m: &RaftMetrics<NodeId, NodeInfo>) -> Option<(NodeId, NodeInfo)> {
    let id = m.current_leader.filter(|_| !unconfirmed_leader(m))?;
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|info| (id, info.clone()))
}

fn members_of(m: &crate::types::StoredMembership) -> Vec<Member> {
    let membership = m.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut out: Vec<Member> = membership
        .nodes()
        .map(|(id, info)| Member {
            id: *id,
            info: info.clone(),
            voter: voters.contains(id),
        })
        .collect();
    out.sort_by_key(|m| (!m.voter, m.id));
    out
}

/// A role as restored from the data dir, for the start-up log line.
fn restored_role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shut down",
    }
}

fn fatal<E: std::fmt::Display>(e: RaftError<NodeId, E>) -> ClusterError {
    match e {
        RaftError::Fatal(openraft::error::Fatal::Stopped) => ClusterError::ShuttingDown,
        e => ClusterError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{EntryInfo, Txn, TxnError};

    /// Applies anything but `stop`, which it cannot.
    struct Picky;

    impl StateMachineApp for Picky {
        fn apply(&self, _: &mut Txn<'_>, _: EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError> {
            if command == b"stop" {
                return Err(TxnError("cannot apply this command".into()));
            }
            Ok(command.to_vec())
        }
    }

    #[tokio::test]
    async fn a_command_apply_cannot_take_stops_the_node_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::testing::start_single_node(dir.path(), vec![], Arc::new(Picky))
            .await
            .unwrap();
        assert_eq!(node.write(b"fine".to_vec()).await.unwrap().1, b"fine");
        let _ = node.write(b"stop".to_vec()).await;
        let why = tokio::time::timeout(Duration::from_secs(5), node.failed())
            .await
            .expect("the node reports that it stopped");
        assert!(why.reason.contains("cannot apply this command"), "{why:?}");
        assert!(!why.storage, "{why:?}");
        assert!(node.write(b"fine".to_vec()).await.is_err());
        node.shutdown().await;
    }

    #[tokio::test]
    async fn a_write_with_no_leader_known_is_refused_as_such() {
        let dir = tempfile::tempdir().unwrap();
        // Never initialized: no leader, and none will come.
        let node = crate::testing::start_node(dir.path(), vec![], Arc::new(Picky), 0)
            .await
            .unwrap();
        let err = node.write(b"fine".to_vec()).await.unwrap_err();
        assert!(matches!(err, ClusterError::NoLeader { .. }), "{err:?}");
        assert!(err.to_string().contains("no leader is known to this node"), "{err}");
        node.shutdown().await;
    }

    #[tokio::test]
    async fn below_the_free_space_floor_writes_are_refused_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        // A floor no disk has room for.
        let floor = disk::free_bytes(dir.path()).unwrap() + 1024 * disk::MB;
        let node = crate::testing::start_node(dir.path(), vec![], Arc::new(Picky), floor)
            .await
            .unwrap();
        node.initialize().await.unwrap();
        // The only voter leads even so: no other node could.
        let mut leading = node.leadership();
        tokio::time::timeout(Duration::from_secs(10), leading.wait_for(|l| l.is_some()))
            .await
            .expect("the only voter leads")
            .unwrap();
        let mut problem = node.problem();
        let why = tokio::time::timeout(Duration::from_secs(10), problem.wait_for(|p| p.is_some()))
            .await
            .expect("the node notices its disk")
            .unwrap()
            .clone()
            .unwrap();
        let path = dir.path().display().to_string();
        assert!(why.starts_with(&format!("disk full at {path}: ")), "{why}");
        let err = node.write(b"fine".to_vec()).await.unwrap_err();
        assert!(matches!(err, ClusterError::Storage { .. }), "{err:?}");
        assert!(err.to_string().contains("(--min-free-mb)"), "{err}");
        assert_eq!(node.status().problem, Some(why));
        assert_eq!(node.status().role, Role::Leader);
        // Nothing reached the log, and reads still get their barrier.
        let last = node.last_log_index().unwrap();
        assert!(node.write_shared(b"fine".to_vec()).await.is_err());
        assert_eq!(node.last_log_index().unwrap(), last);
        node.read_barrier().await.unwrap();
        node.shutdown().await;
    }

    #[tokio::test]
    async fn concurrent_reads_share_leadership_checks_and_each_sees_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::testing::start_single_node(dir.path(), vec![], Arc::new(Picky))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move {
                    let (index, _) = node.write_shared(format!("w{i}").into_bytes()).await.unwrap();
                    node.read_barrier().await.unwrap();
                    let applied = node.status().applied_index;
                    assert!(
                        applied >= index,
                        "read {i} after write {index} saw applied index {applied}"
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        node.shutdown().await;
        let err = node.read_barrier().await.unwrap_err();
        assert!(
            matches!(err, ClusterError::ShuttingDown | ClusterError::NoLeader { .. }),
            "{err:?}"
        );
    }
}
