//! Fuzzing the peer port (docs/fuzzing.md): what a node does with the bytes
//! of a `PeerMessage`. Arbitrary bytes, and mutated encodings of valid
//! requests and answers, are decoded as every type the peer port reads
//! (requests) and the peer client reads (answers), and the protobuf frame
//! itself; none panics. A smaller share goes through the real peer service
//! of a one-node cluster, with this cluster's id or another and any sender:
//! every answer is an answer or a status, never a panic.
//!
//! The shares and the counting follow the daemon's harnesses
//! (`daemon/src/fuzz/mod.rs`): `FUZZ_CASES` is the total over all of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use opsd_proto::peer::peer_server::Peer;
use opsd_proto::peer::PeerMessage;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner};

use crate::node::{ClusterNode, LeaderRequest, LeaderResponse};
use crate::peer_service::PeerService;
use crate::state_machine::{EntryInfo, StateMachineApp, Txn, TxnError};
use crate::types::{Command, NodeId, NodeInfo, TypeConfig};
use crate::wire::{decode, encode};
use crate::ClusterError;

/// The total over every harness: `FUZZ_CASES`, or a short run's.
fn total() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn report(name: &str, count: u64) {
    eprintln!("fuzz {name}: {count} inputs");
    if let Ok(dir) = std::env::var("FUZZ_COUNTS") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), format!("{count}\n"));
    }
}

fn runner(cases: u64, regressions: &'static str, seed: u64, round: u64) -> TestRunner {
    let config = Config {
        cases: cases.clamp(1, u32::MAX as u64) as u32,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&round.to_le_bytes());
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::XorShift, &bytes))
}

/// A vote of a term and a leader.
fn vote(term: u64, node: u64) -> Vote<NodeId> {
    Vote::new_committed(term, node)
}

fn log_id(term: u64, node: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

/// Valid encodings of everything the peer port and the peer client read,
/// each tagged with the type it is of.
fn valid_messages(term: u64, node: u64, index: u64, payload: Vec<u8>) -> Vec<(usize, Vec<u8>)> {
    let entries = vec![
        Entry::<TypeConfig> {
            log_id: log_id(term, node, index),
            payload: EntryPayload::Blank,
        },
        Entry::<TypeConfig> {
            log_id: log_id(term, node, index + 1),
            payload: EntryPayload::Normal(Command(vec![payload.clone(), vec![]])),
        },
    ];
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: vote(term, node),
        prev_log_id: Some(log_id(term, node, index.saturating_sub(1))),
        entries,
        leader_commit: Some(log_id(term, node, index)),
    };
    let info = NodeInfo {
        addr: "127.0.0.1:1".into(),
        peer_addr: "127.0.0.1:2".into(),
    };
    let mut out = vec![
        (0, encode(&append)),
        (
            1,
            encode(&VoteRequest::new(vote(term, node), Some(log_id(term, node, index)))),
        ),
        (3, encode(&LeaderRequest::Write(payload.clone()))),
        (3, encode(&LeaderRequest::WriteShared(payload))),
        (3, encode(&LeaderRequest::ReadIndex)),
        (3, encode(&LeaderRequest::Members)),
        (
            3,
            encode(&LeaderRequest::AddNode {
                id: node,
                info,
                cluster_id: "c".into(),
            }),
        ),
        (3, encode(&LeaderRequest::RemoveNode { id: node })),
        (4, encode(&node)),
        (
            5,
            encode(&Ok::<_, RaftError<NodeId>>(AppendEntriesResponse::<NodeId>::Success)),
        ),
        (
            6,
            encode(&Ok::<_, RaftError<NodeId>>(VoteResponse::new(
                vote(term, node),
                Some(log_id(term, node, index)),
                true,
            ))),
        ),
        (
            7,
            encode(&Ok::<_, RaftError<NodeId, InstallSnapshotError>>(
                InstallSnapshotResponse { vote: vote(term, node) },
            )),
        ),
        (
            8,
            encode(&Ok::<_, ClusterError>(LeaderResponse::Written {
                index,
                response: vec![1, 2],
            })),
        ),
    ];
    out.retain(|(_, b)| b.is_ok());
    out.into_iter().map(|(t, b)| (t, b.unwrap_or_default())).collect()
}

/// How many types [`decode_as`] knows.
const TYPES: usize = 9;

/// Decodes `bytes` as type `which`; a value that decodes must encode again.
fn decode_as(which: usize, bytes: &[u8]) -> Result<(), TestCaseError> {
    fn again<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(v) = decode::<T>(bytes) {
            prop_assert!(
                encode(&v).is_ok(),
                "a decoded {} does not encode",
                std::any::type_name::<T>()
            );
        }
        Ok(())
    }
    match which % TYPES {
        0 => again::<AppendEntriesRequest<TypeConfig>>(bytes),
        1 => again::<VoteRequest<NodeId>>(bytes),
        2 => again::<InstallSnapshotRequest<TypeConfig>>(bytes),
        3 => again::<LeaderRequest>(bytes),
        4 => again::<NodeId>(bytes),
        5 => again::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(bytes),
        6 => again::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(bytes),
        7 => again::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(bytes),
        _ => again::<Result<LeaderResponse, ClusterError>>(bytes),
    }
}

/// A change to bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    Word(Index, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![0u64..16, Just(u64::MAX), Just(1u64 << 62), any::<u64>()];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), word).prop_map(|(i, w)| Mutation::Word(i, w)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            _ if len == 0 => {}
            Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Set(i, b) => bytes[i.index(len)] = *b,
            Mutation::Remove(i) => {
                bytes.remove(i.index(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len)),
            Mutation::Word(i, w) => {
                let at = i.index(len);
                for (k, b) in w.to_le_bytes().iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    bytes
}

/// Bytes of a peer message's `data`: a valid encoding (of its type or
/// another), mutated or not, or anything. Tagged with the type to read.
fn data() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let valid = (
        prop_oneof![0u64..4, any::<u64>()],
        prop_oneof![0u64..4, any::<u64>()],
        prop_oneof![0u64..8, any::<u64>()],
        vec(any::<u8>(), 0..16),
        any::<Index>(),
    )
        .prop_map(|(t, n, i, p, pick)| {
            let all = valid_messages(t, n, i, p);
            all[pick.index(all.len())].clone()
        });
    prop_oneof![
        2 => valid.clone(),
        5 => (valid, vec(mutation(), 1..4), any::<bool>(), 0..TYPES)
            .prop_map(|((t, b), m, same, other)| (if same { t } else { other }, mutate(b, &m))),
        2 => (0..TYPES, vec(any::<u8>(), 0..64)),
        1 => (0..TYPES, vec(any::<u8>(), 0..2048)),
    ]
}

#[test]
fn peer_message_decoder() {
    const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/peer_message_decoder.txt");
    let budget = (total() * 240).div_ceil(1000).max(1);
    let seed = seed();
    let count = AtomicU64::new(0);
    let strategy = prop_oneof![
        9 => data().prop_map(|(t, b)| (t, b, false)),
        1 => (0..TYPES, vec(any::<u8>(), 0..256)).prop_map(|(t, b)| (t, b, true)),
    ];
    let mut round = 0;
    while count.load(Ordering::Relaxed) < budget {
        let left = budget - count.load(Ordering::Relaxed);
        let result = runner(left, REGRESSIONS, seed, round).run(&strategy, |(which, bytes, frame)| {
            count.fetch_add(1, Ordering::Relaxed);
            if frame {
                // The gRPC frame itself: a PeerMessage of any bytes.
                if let Ok(msg) = <PeerMessage as prost::Message>::decode(bytes.as_slice()) {
                    return decode_as(which, &msg.data);
                }
                return Ok(());
            }
            decode_as(which, &bytes)
        });
        if let Err(e) = result {
            panic!(
                "fuzz harness peer_message_decoder failed (FUZZ_SEED={seed}; its seed is saved in {REGRESSIONS}): {e}"
            );
        }
        round += 1;
    }
    report("peer_message_decoder", count.load(Ordering::Relaxed));
}

/// An application that answers every command with its bytes.
struct Echo;

impl StateMachineApp for Echo {
    fn apply(&self, _: &mut Txn<'_>, _: EntryInfo, command: &[u8]) -> Result<Vec<u8>, TxnError> {
        Ok(command.to_vec())
    }
}

/// Calls the peer service method `which` with `msg`.
async fn call(service: &PeerService, which: usize, msg: PeerMessage) -> Result<PeerMessage, tonic::Status> {
    let req = tonic::Request::new(msg);
    let answer = match which % 5 {
        0 => service.append_entries(req).await,
        1 => service.vote(req).await,
        2 => service.install_snapshot(req).await,
        3 => service.leader(req).await,
        _ => service.removed(req).await,
    };
    answer.map(tonic::Response::into_inner)
}

#[test]
fn peer_service_messages() {
    const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/peer_service_messages.txt");
    let budget = (total() * 10).div_ceil(1000).max(1);
    let seed = seed();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let node: ClusterNode = rt
        .block_on(crate::testing::start_single_node(dir.path(), vec![], Arc::new(Echo)))
        .expect("a one-node cluster");
    let service = PeerService::new(node.clone());
    let me = node.node_id();
    let ours = node.cluster_id().to_string();
    let count = AtomicU64::new(0);
    let strategy = (
        data(),
        prop_oneof![4 => Just(None), 1 => ".{0,8}".prop_map(Some)],
        prop_oneof![Just(me), Just(me + 1), any::<u64>()],
    );
    // Sent as a peer: the method for the data's type.
    let method = |which: usize| match which {
        0 | 5 => 0,
        1 | 6 => 1,
        2 | 7 => 2,
        3 | 8 => 3,
        _ => 4,
    };
    let mut round = 0;
    while count.load(Ordering::Relaxed) < budget {
        let left = budget - count.load(Ordering::Relaxed);
        let result = runner(left, REGRESSIONS, seed, round).run(&strategy, |((which, data), cluster, from)| {
            count.fetch_add(1, Ordering::Relaxed);
            let msg = PeerMessage {
                cluster_id: cluster.unwrap_or_else(|| ours.clone()),
                from,
                data,
            };
            let answer = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(20), call(&service, method(which), msg)).await
            });
            if let Ok(Err(status)) = answer {
                prop_assert!(!status.message().is_empty(), "{:?}", status);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!(
                "fuzz harness peer_service_messages failed (FUZZ_SEED={seed}; its seed is saved in {REGRESSIONS}): {e}"
            );
        }
        round += 1;
    }
    rt.block_on(node.shutdown());
    report("peer_service_messages", count.load(Ordering::Relaxed));
}
