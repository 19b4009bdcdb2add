//! Request validation of every RPC of every client service (Cluster,
//! Settings, Resources, Services): arbitrary field values go through the
//! real handlers, in process, on a real one-node cluster (its engine has no
//! providers, so no step runs anything). No panic; a refusal is one of the
//! documented codes, and an INVALID_ARGUMENT names a field. And decoding
//! arbitrary bytes as each request message never panics, while what
//! decodes survives its own encoding.

use std::collections::HashMap;
use std::sync::Arc;

use opsd_proto::prost_types::{self, value::Kind as ValueKind, ListValue, Struct, Value};
use opsd_proto::v1::cluster_server::Cluster;
use opsd_proto::v1::resources_server::Resources;
use opsd_proto::v1::security_server::Security;
use opsd_proto::v1::services_server::Services;
use opsd_proto::v1::settings_server::Settings;
use opsd_proto::v1::*;
use proptest::collection::{btree_map, hash_map, vec};
use proptest::prelude::*;
use tonic::{Code, Status};

use super::strategies::{bytes, mutate, mutation, number, one_of, signed, text};
use super::{fuzz, regressions, Harness};
use crate::api::caller::Caller;
use crate::api::cluster::ClusterService;
use crate::api::follow::Feed;
use crate::api::resources::ResourcesService;
use crate::api::security::SecurityService;
use crate::api::settings::SettingsService;
use crate::domain::{Domain, TABLES};
use crate::engine::Engine;
use crate::lb::api::ServicesService;
use crate::lb::plane::Balancer;
use crate::ops::Providers;

const KINDS: &[&str] = &["image", "cluster", "service", "opsd-cluster", "app"];
const NAMES: &[&str] = &["web", "a", "db"];
const KEYS: &[&str] = &["a", "b/c"];
const EVENTS: &[&str] = &["rebuild", "destroy", "retry", "swap"];
const RUNS: &[&str] = &["r1", "r2", "r3", "r0", "1", "r-1", "r18446744073709551616"];

/// A JSON value as a protobuf `Value`: numbers at the extremes (NaN and
/// the infinities too), text of any sort, nested lists and structs.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(ValueKind::NullValue(0)),
        any::<i32>().prop_map(ValueKind::NullValue),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(-0.0),
            any::<f64>()
        ]
        .prop_map(ValueKind::NumberValue),
        text().prop_map(ValueKind::StringValue),
        any::<bool>().prop_map(ValueKind::BoolValue),
    ];
    leaf.prop_map(|k| Value { kind: Some(k) })
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(|values| Value {
                    kind: Some(ValueKind::ListValue(ListValue { values }))
                }),
                btree_map(
                    one_of(&["source", "size", "image", "port", "cluster", "provider"]),
                    inner,
                    0..4
                )
                .prop_map(|fields| Value {
                    kind: Some(ValueKind::StructValue(Struct {
                        fields: fields.into_iter().collect()
                    }))
                }),
                Just(Value { kind: None }),
            ]
        })
}

fn spec() -> impl Strategy<Value = Option<Struct>> {
    proptest::option::of(
        btree_map(
            one_of(&["source", "size", "image", "port", "cluster", "provider"]),
            value(),
            0..5,
        )
        .prop_map(|fields| Struct {
            fields: fields.into_iter().collect(),
        }),
    )
}

fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    proptest::option::of((signed(), any::<i32>()).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }))
}

fn strings() -> impl Strategy<Value = HashMap<String, String>> {
    hash_map(one_of(&["team", "version", "a/b"]), text(), 0..4)
}

fn kind_source() -> BoxedStrategy<String> {
    prop_oneof![
        3 => proptest::sample::select(super::kind::kind_files()).prop_map(str::to_string),
        1 => text(),
    ]
    .boxed()
}

/// One request to one RPC.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Call {
    Status(StatusRequest),
    Members(MembersRequest),
    Join(JoinRequest),
    Remove(RemoveRequest),
    Put(PutRequest),
    Get(GetRequest),
    List(ListRequest),
    Delete(DeleteRequest),
    Watch(WatchRequest),
    Effective(EffectiveRequest),
    ApplyKind(ApplyKindRequest),
    ListKinds(ListKindsRequest),
    GetKind(GetKindRequest),
    Create(CreateResourceRequest),
    GetResource(GetResourceRequest),
    ListResources(ListResourcesRequest),
    DeleteResource(DeleteResourceRequest),
    Do(DoRequest),
    WatchResource(WatchResourceRequest),
    ListRuns(ListRunsRequest),
    GetRun(GetRunRequest),
    Logs(LogsRequest),
    Cancel(CancelRequest),
    History(HistoryRequest),
    Stats(StatsRequest),
    Local(LocalRequest),
    Resolve(ResolveRequest),
    WatchResolve(ResolveRequest),
    CreateJoinToken(CreateJoinTokenRequest),
    JoinCertificate(JoinCertificateRequest),
    CreateUser(CreateUserRequest),
    ListUsers(ListUsersRequest),
    GetUser(GetUserRequest),
    DeleteUser(DeleteUserRequest),
    PutRole(PutRoleRequest),
    ListRoles(ListRolesRequest),
    GetRole(GetRoleRequest),
    DeleteRole(DeleteRoleRequest),
    CreateToken(CreateTokenRequest),
    ListTokens(ListTokensRequest),
    GetToken(GetTokenRequest),
    RevokeToken(RevokeTokenRequest),
    WhoAmI(WhoAmIRequest),
}

fn call() -> impl Strategy<Value = Call> {
    let kind = || one_of(KINDS);
    let name = || one_of(NAMES);
    let run = || one_of(RUNS);
    prop_oneof![
        Just(Call::Status(StatusRequest {})),
        Just(Call::Members(MembersRequest {})),
        (number(), text(), text(), text(), text()).prop_map(|(node_id, addr, peer_addr, cluster_id, join_token)| {
            Call::Join(JoinRequest {
                node_id,
                addr,
                peer_addr,
                cluster_id,
                join_token,
            })
        }),
        number().prop_map(|node_id| Call::Remove(RemoveRequest { node_id })),
        (one_of(KEYS), text(), proptest::option::of(number()), text()).prop_map(
            |(key, value, expected_revision, reason)| Call::Put(PutRequest {
                key,
                value,
                expected_revision,
                reason,
                ..Default::default()
            })
        ),
        (one_of(KEYS), any::<bool>()).prop_map(|(key, stale)| Call::Get(GetRequest {
            key,
            stale,
            ..Default::default()
        })),
        (text(), any::<bool>()).prop_map(|(prefix, stale)| Call::List(ListRequest { prefix, stale })),
        (one_of(KEYS), proptest::option::of(number()), text()).prop_map(|(key, expected_revision, reason)| {
            Call::Delete(DeleteRequest {
                key,
                expected_revision,
                reason,
            })
        }),
        text().prop_map(|prefix| Call::Watch(WatchRequest { prefix })),
        (kind(), name(), any::<bool>()).prop_map(|(kind, name, stale)| Call::Effective(EffectiveRequest {
            kind,
            name,
            stale,
            ..Default::default()
        })),
        kind_source().prop_map(|source| Call::ApplyKind(ApplyKindRequest { source })),
        Just(Call::ListKinds(ListKindsRequest {})),
        kind().prop_map(|name| Call::GetKind(GetKindRequest { name })),
        (kind(), name(), spec(), strings(), text()).prop_map(|(kind, name, spec, labels, reason)| Call::Create(
            CreateResourceRequest {
                kind,
                name,
                spec,
                labels,
                reason
            }
        )),
        (kind(), name(), any::<bool>()).prop_map(|(kind, name, stale)| Call::GetResource(GetResourceRequest {
            kind,
            name,
            stale
        })),
        (kind(), any::<bool>()).prop_map(|(kind, stale)| Call::ListResources(ListResourcesRequest { kind, stale })),
        (kind(), name(), text()).prop_map(|(kind, name, reason)| Call::DeleteResource(DeleteResourceRequest {
            kind,
            name,
            reason
        })),
        (kind(), name(), one_of(EVENTS), strings(), text()).prop_map(|(kind, name, event, args, reason)| Call::Do(
            DoRequest {
                kind,
                name,
                event,
                args,
                reason
            }
        )),
        (kind(), name()).prop_map(|(kind, name)| Call::WatchResource(WatchResourceRequest { kind, name })),
        (kind(), name(), any::<i32>(), duration(), any::<u32>()).prop_map(|(kind, name, outcome, since, limit)| {
            Call::ListRuns(ListRunsRequest {
                kind,
                name,
                outcome: outcome % 8,
                since,
                limit,
            })
        }),
        run().prop_map(|run_id| Call::GetRun(GetRunRequest { run_id })),
        (run(), any::<bool>()).prop_map(|(run_id, follow)| Call::Logs(LogsRequest { run_id, follow })),
        (run(), text()).prop_map(|(run_id, reason)| Call::Cancel(CancelRequest { run_id, reason })),
        (kind(), name()).prop_map(|(kind, name)| Call::History(HistoryRequest { kind, name })),
        (kind(), duration()).prop_map(|(kind, since)| Call::Stats(StatsRequest { kind, since })),
        name().prop_map(|name| Call::Local(LocalRequest { name })),
        (name(), any::<bool>()).prop_map(|(name, stale)| Call::Resolve(ResolveRequest { name, stale })),
        (name(), any::<bool>()).prop_map(|(name, stale)| Call::WatchResolve(ResolveRequest { name, stale })),
        duration().prop_map(|ttl| Call::CreateJoinToken(CreateJoinTokenRequest { ttl })),
        (text(), number())
            .prop_map(|(join_token, node_id)| Call::JoinCertificate(JoinCertificateRequest { join_token, node_id })),
        (who(), vec(who(), 0..3)).prop_map(|(name, roles)| Call::CreateUser(CreateUserRequest { name, roles })),
        Just(Call::ListUsers(ListUsersRequest {})),
        who().prop_map(|name| Call::GetUser(GetUserRequest { name })),
        who().prop_map(|name| Call::DeleteUser(DeleteUserRequest { name })),
        (who(), vec(rule(), 0..3)).prop_map(|(name, rules)| Call::PutRole(PutRoleRequest { name, rules })),
        Just(Call::ListRoles(ListRolesRequest {})),
        who().prop_map(|name| Call::GetRole(GetRoleRequest { name })),
        who().prop_map(|name| Call::DeleteRole(DeleteRoleRequest { name })),
        (who(), number(), text()).prop_map(
            |(user, ttl_seconds, description)| Call::CreateToken(CreateTokenRequest {
                user,
                ttl_seconds,
                description
            })
        ),
        who().prop_map(|user| Call::ListTokens(ListTokensRequest { user })),
        text().prop_map(|id| Call::GetToken(GetTokenRequest { id })),
        text().prop_map(|id| Call::RevokeToken(RevokeTokenRequest { id })),
        Just(Call::WhoAmI(WhoAmIRequest {})),
    ]
}

/// A user or role name: a few that meet, or anything.
fn who() -> BoxedStrategy<String> {
    one_of(&["admin", "ci", "deployer"])
}

/// A rule: valid ones and anything.
fn rule() -> BoxedStrategy<String> {
    prop_oneof![
        Just("*:*".to_string()),
        Just("do,read:resources/app/*".to_string()),
        Just("read:settings/app/*".to_string()),
        text(),
    ]
    .boxed()
}

impl Call {
    /// The request's fields (and the metadata the handlers read), one of
    /// which an INVALID_ARGUMENT must name.
    fn fields(&self) -> &'static [&'static str] {
        match self {
            Call::Join(_) => &["node_id", "addr", "peer_addr", "cluster_id", "join_token"],
            Call::JoinCertificate(_) => &["join_token", "node_id"],
            Call::CreateJoinToken(_) => &["ttl"],
            Call::CreateUser(_) | Call::GetUser(_) | Call::DeleteUser(_) => &["name", "roles", "role"],
            Call::PutRole(_) | Call::GetRole(_) | Call::DeleteRole(_) => &["name", "rules", "rule"],
            Call::CreateToken(_) => &["user", "ttl_seconds", "description"],
            Call::ListTokens(_) => &["user"],
            Call::GetToken(_) | Call::RevokeToken(_) => &["id"],
            Call::Remove(_) => &["node_id"],
            Call::Put(_) | Call::Delete(_) => &["key", "value", "expected_revision", "reason"],
            Call::Get(_) => &["key"],
            Call::List(_) | Call::Watch(_) => &["prefix"],
            // A kind file's errors name the key at fault inside it.
            Call::ApplyKind(_) => &["source", "kind"],
            Call::ListRuns(_) => &["kind", "name", "outcome", "since", "limit"],
            Call::GetRun(_) | Call::Logs(_) => &["run_id"],
            Call::Cancel(_) => &["run_id", "reason"],
            Call::Stats(_) => &["kind", "since"],
            Call::Create(_) => &["kind", "name", "spec", "labels", "reason"],
            Call::Do(_) => &["kind", "name", "event", "args", "reason"],
            _ => &["kind", "name", "reason"],
        }
    }
}

/// The services of one node, and the runtime they run on.
struct Node {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    node: opsd_cluster::ClusterNode,
    engine: Engine,
    cluster: ClusterService,
    settings: SettingsService,
    resources: ResourcesService,
    services: ServicesService,
    security: SecurityService,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Node {
    fn start() -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temp dir");
        let tables = TABLES.iter().map(|t| t.to_string()).collect();
        let (node, engine, feed) = rt.block_on(async {
            let node = opsd_cluster::testing::start_single_node(dir.path(), tables, Arc::new(Domain))
                .await
                .expect("a one-node cluster");
            let engine = Engine::start(node.clone(), Providers::new([]), dir.path()).expect("an engine");
            let feed = Feed::start(&node);
            (node, engine, feed)
        });
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let balancer = Balancer::new(node.node_id(), "127.0.0.1", "127.0.0.1");
        Node {
            cluster: ClusterService::new(node.clone()),
            settings: SettingsService::new(node.clone(), feed.clone(), stop.clone()),
            resources: ResourcesService::new(node.clone(), engine.clone(), feed, stop.clone()),
            services: ServicesService::new(node.clone(), balancer, stop),
            security: SecurityService::new(node.clone()),
            _stop: stop_tx,
            rt,
            _dir: dir,
            node,
            engine,
        }
    }

    /// Calls the RPC as `principal` would (the identity layer first).
    async fn call(&self, call: Call, principal: Option<String>) -> Result<(), Status> {
        // The caller is a node (allowed everything), so that validation
        // behind authorisation is what the inputs reach; the principal is
        // kept for a caller the inputs name.
        fn req<T>(body: T, principal: &Option<String>) -> Result<tonic::Request<T>, Status> {
            let caller = match principal {
                Some(name) => Caller::user(
                    name,
                    None,
                    vec![crate::domain::security::Rule::parse("*:*").expect("a rule")],
                ),
                None => Caller::node(),
            };
            let mut out = tonic::Request::new(body);
            caller.attach(&mut out);
            Ok(out)
        }
        let p = &principal;
        let (s, c, r, l, x) = (
            &self.settings,
            &self.cluster,
            &self.resources,
            &self.services,
            &self.security,
        );
        match call {
            Call::Status(b) => c.status(req(b, p)?).await.map(drop),
            Call::Members(b) => c.members(req(b, p)?).await.map(drop),
            Call::Join(b) => c.join(req(b, p)?).await.map(drop),
            Call::Remove(b) => c.remove(req(b, p)?).await.map(drop),
            Call::Put(b) => s.put(req(b, p)?).await.map(drop),
            Call::Get(b) => s.get(req(b, p)?).await.map(drop),
            Call::List(b) => s.list(req(b, p)?).await.map(drop),
            Call::Delete(b) => s.delete(req(b, p)?).await.map(drop),
            Call::Watch(b) => s.watch(req(b, p)?).await.map(drop),
            Call::Effective(b) => s.effective(req(b, p)?).await.map(drop),
            Call::ApplyKind(b) => r.apply_kind(req(b, p)?).await.map(drop),
            Call::ListKinds(b) => r.list_kinds(req(b, p)?).await.map(drop),
            Call::GetKind(b) => r.get_kind(req(b, p)?).await.map(drop),
            Call::Create(b) => r.create(req(b, p)?).await.map(drop),
            Call::GetResource(b) => r.get(req(b, p)?).await.map(drop),
            Call::ListResources(b) => r.list(req(b, p)?).await.map(drop),
            Call::DeleteResource(b) => r.delete(req(b, p)?).await.map(drop),
            Call::Do(b) => r.r#do(req(b, p)?).await.map(drop),
            Call::WatchResource(b) => r.watch(req(b, p)?).await.map(drop),
            Call::ListRuns(b) => r.list_runs(req(b, p)?).await.map(drop),
            Call::GetRun(b) => r.get_run(req(b, p)?).await.map(drop),
            Call::Logs(b) => r.logs(req(b, p)?).await.map(drop),
            Call::Cancel(b) => r.cancel(req(b, p)?).await.map(drop),
            Call::History(b) => r.history(req(b, p)?).await.map(drop),
            Call::Stats(b) => r.stats(req(b, p)?).await.map(drop),
            Call::Local(b) => l.local(req(b, p)?).await.map(drop),
            Call::Resolve(b) => l.resolve(req(b, p)?).await.map(drop),
            Call::WatchResolve(b) => l.watch_resolve(req(b, p)?).await.map(drop),
            Call::CreateJoinToken(b) => c.create_join_token(req(b, p)?).await.map(drop),
            Call::JoinCertificate(b) => c.join_certificate(req(b, p)?).await.map(drop),
            Call::CreateUser(b) => x.create_user(req(b, p)?).await.map(drop),
            Call::ListUsers(b) => x.list_users(req(b, p)?).await.map(drop),
            Call::GetUser(b) => x.get_user(req(b, p)?).await.map(drop),
            Call::DeleteUser(b) => x.delete_user(req(b, p)?).await.map(drop),
            Call::PutRole(b) => x.put_role(req(b, p)?).await.map(drop),
            Call::ListRoles(b) => x.list_roles(req(b, p)?).await.map(drop),
            Call::GetRole(b) => x.get_role(req(b, p)?).await.map(drop),
            Call::DeleteRole(b) => x.delete_role(req(b, p)?).await.map(drop),
            Call::CreateToken(b) => x.create_token(req(b, p)?).await.map(drop),
            Call::ListTokens(b) => x.list_tokens(req(b, p)?).await.map(drop),
            Call::GetToken(b) => x.get_token(req(b, p)?).await.map(drop),
            Call::RevokeToken(b) => x.revoke_token(req(b, p)?).await.map(drop),
            Call::WhoAmI(b) => x.who_am_i(req(b, p)?).await.map(drop),
        }
    }
}

/// The codes a refused request may get (docs/architecture.md): the
/// caller's fault, or the state's.
const REFUSALS: &[Code] = &[
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::Unauthenticated,
];

#[test]
fn request_validation() {
    let harness = Harness {
        name: "request_validation",
        per_mille: 50,
        inputs_per_case: 1,
        regressions: regressions!("request_validation"),
    };
    let node = Node::start();
    let ours = node.node.cluster_id().to_string();
    let me = node.node.node_id();
    // A user's name is checked when the user is made: callers are nodes
    // or users of valid names.
    let principal = prop_oneof![
        6 => Just(None),
        1 => proptest::sample::select(&["admin", "ci"][..]).prop_map(|n| Some(n.to_string()))
    ];
    fuzz(&harness, (call(), principal), |(mut call, principal), count| {
        count.add(1);
        match &mut call {
            // A join naming this cluster would really add a member, and a
            // removal of this node really remove it: the handlers'
            // validation is what is fuzzed, not membership.
            Call::Join(j) if j.cluster_id.is_empty() || j.cluster_id == ours => j.cluster_id = "other".into(),
            Call::Remove(r) if r.node_id == me => r.node_id = me + 1,
            _ => {}
        }
        let fields = call.fields();
        let shown = format!("{call:?}");
        let answer = node.rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(30), node.call(call, principal)).await
        });
        let Ok(answer) = answer else {
            return Err(TestCaseError::fail(format!("{shown}: no answer within 30 s")));
        };
        if let Err(status) = answer {
            prop_assert!(
                REFUSALS.contains(&status.code()),
                "{}: refused with {:?}: {}",
                shown,
                status.code(),
                status.message()
            );
            if status.code() == Code::InvalidArgument {
                let msg = status.message();
                prop_assert!(
                    fields.iter().any(|f| msg.contains(f)),
                    "{}: INVALID_ARGUMENT names none of {:?}: {}",
                    shown,
                    fields,
                    msg
                );
            }
        }
        Ok(())
    });
    node.rt.block_on(async {
        node.engine.stop().await;
        node.node.shutdown().await;
    });
}

/// Encodes one request of each type; `which` picks it.
fn encode_request(which: usize, call: &Call) -> Vec<u8> {
    use prost::Message;
    let _ = which;
    match call {
        Call::Status(b) => b.encode_to_vec(),
        Call::Members(b) => b.encode_to_vec(),
        Call::Join(b) => b.encode_to_vec(),
        Call::Remove(b) => b.encode_to_vec(),
        Call::Put(b) => b.encode_to_vec(),
        Call::Get(b) => b.encode_to_vec(),
        Call::List(b) => b.encode_to_vec(),
        Call::Delete(b) => b.encode_to_vec(),
        Call::Watch(b) => b.encode_to_vec(),
        Call::Effective(b) => b.encode_to_vec(),
        Call::ApplyKind(b) => b.encode_to_vec(),
        Call::ListKinds(b) => b.encode_to_vec(),
        Call::GetKind(b) => b.encode_to_vec(),
        Call::Create(b) => b.encode_to_vec(),
        Call::GetResource(b) => b.encode_to_vec(),
        Call::ListResources(b) => b.encode_to_vec(),
        Call::DeleteResource(b) => b.encode_to_vec(),
        Call::Do(b) => b.encode_to_vec(),
        Call::WatchResource(b) => b.encode_to_vec(),
        Call::ListRuns(b) => b.encode_to_vec(),
        Call::GetRun(b) => b.encode_to_vec(),
        Call::Logs(b) => b.encode_to_vec(),
        Call::Cancel(b) => b.encode_to_vec(),
        Call::History(b) => b.encode_to_vec(),
        Call::Stats(b) => b.encode_to_vec(),
        Call::Local(b) => b.encode_to_vec(),
        Call::Resolve(b) | Call::WatchResolve(b) => b.encode_to_vec(),
        Call::CreateJoinToken(b) => b.encode_to_vec(),
        Call::JoinCertificate(b) => b.encode_to_vec(),
        Call::CreateUser(b) => b.encode_to_vec(),
        Call::ListUsers(b) => b.encode_to_vec(),
        Call::GetUser(b) => b.encode_to_vec(),
        Call::DeleteUser(b) => b.encode_to_vec(),
        Call::PutRole(b) => b.encode_to_vec(),
        Call::ListRoles(b) => b.encode_to_vec(),
        Call::GetRole(b) => b.encode_to_vec(),
        Call::DeleteRole(b) => b.encode_to_vec(),
        Call::CreateToken(b) => b.encode_to_vec(),
        Call::ListTokens(b) => b.encode_to_vec(),
        Call::GetToken(b) => b.encode_to_vec(),
        Call::RevokeToken(b) => b.encode_to_vec(),
        Call::WhoAmI(b) => b.encode_to_vec(),
    }
}

/// How many request types [`decode_as`] knows.
const REQUEST_TYPES: usize = 42;

/// Decodes `bytes` as request type `which`: no panic, and what decodes
/// encodes to bytes that decode to it again.
fn decode_as(which: usize, bytes: &[u8]) -> Result<(), TestCaseError> {
    fn again<M: prost::Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(m) = M::decode(bytes) {
            let encoded = m.encode_to_vec();
            // Compared as values (a map's entries encode in any order),
            // or, for a NaN in a spec (not equal to itself), by length.
            let back = M::decode(encoded.as_slice());
            prop_assert!(
                back.as_ref().is_ok_and(
                    |b| b == &m || (format!("{m:?}").contains("NaN") && b.encode_to_vec().len() == encoded.len())
                ),
                "{:?} decoded back as {:?}",
                m,
                back
            );
        }
        Ok(())
    }
    match which % REQUEST_TYPES {
        0 => again::<StatusRequest>(bytes),
        1 => again::<MembersRequest>(bytes),
        2 => again::<JoinRequest>(bytes),
        3 => again::<RemoveRequest>(bytes),
        4 => again::<PutRequest>(bytes),
        5 => again::<GetRequest>(bytes),
        6 => again::<ListRequest>(bytes),
        7 => again::<DeleteRequest>(bytes),
        8 => again::<WatchRequest>(bytes),
        9 => again::<EffectiveRequest>(bytes),
        10 => again::<ApplyKindRequest>(bytes),
        11 => again::<ListKindsRequest>(bytes),
        12 => again::<GetKindRequest>(bytes),
        13 => again::<CreateResourceRequest>(bytes),
        14 => again::<GetResourceRequest>(bytes),
        15 => again::<ListResourcesRequest>(bytes),
        16 => again::<DeleteResourceRequest>(bytes),
        17 => again::<DoRequest>(bytes),
        18 => again::<WatchResourceRequest>(bytes),
        19 => again::<ListRunsRequest>(bytes),
        20 => again::<GetRunRequest>(bytes),
        21 => again::<LogsRequest>(bytes),
        22 => again::<CancelRequest>(bytes),
        23 => again::<HistoryRequest>(bytes),
        24 => again::<StatsRequest>(bytes),
        25 => again::<LocalRequest>(bytes),
        26 => again::<ResolveRequest>(bytes),
        27 => again::<CreateJoinTokenRequest>(bytes),
        28 => again::<JoinCertificateRequest>(bytes),
        29 => again::<CreateUserRequest>(bytes),
        30 => again::<ListUsersRequest>(bytes),
        31 => again::<GetUserRequest>(bytes),
        32 => again::<DeleteUserRequest>(bytes),
        33 => again::<PutRoleRequest>(bytes),
        34 => again::<ListRolesRequest>(bytes),
        35 => again::<GetRoleRequest>(bytes),
        36 => again::<DeleteRoleRequest>(bytes),
        37 => again::<CreateTokenRequest>(bytes),
        38 => again::<ListTokensRequest>(bytes),
        39 => again::<GetTokenRequest>(bytes),
        40 => again::<RevokeTokenRequest>(bytes),
        _ => again::<WhoAmIRequest>(bytes),
    }
}

#[test]
fn request_decoding() {
    let harness = Harness {
        name: "request_decoding",
        per_mille: 130,
        inputs_per_case: 1,
        regressions: regressions!("request_decoding"),
    };
    let input = prop_oneof![
        3 => (0..REQUEST_TYPES, call(), vec(mutation(), 0..4))
            .prop_map(|(t, c, m)| (t, mutate(encode_request(t, &c), &m))),
        1 => (0..REQUEST_TYPES, bytes()),
    ];
    fuzz(&harness, input, |(which, bytes), count| {
        count.add(1);
        decode_as(which, &bytes)
    });
}
