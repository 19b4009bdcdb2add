//! Every method of every `opsd.v1` service, as the server's own reflection
//! lists them (so a new RPC cannot be forgotten), answers UNAUTHENTICATED to
//! a request without a token, with a malformed one and with a revoked one,
//! and changes nothing. Health checks and reflection stay open.
//!
//! `Cluster.JoinCertificate` and `Cluster.Join` take a join token in the
//! request instead (a new node has nothing else): without either they are
//! refused as UNAUTHENTICATED too, saying so.

use std::time::Duration;

use opsd_proto::prost_types::FileDescriptorProto;
use opsd_tests::api::{
    ListKindsRequest, ListRequest, ListResourcesRequest, ListRolesRequest, ListTokensRequest, ListUsersRequest,
    MembersRequest, RevokeTokenRequest,
};
use opsd_tests::{access, client, Cluster, Options};
use prost::Message;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Code;

/// The calls a join token in the request authenticates.
const JOIN_TOKEN_METHODS: [&str; 2] = ["/opsd.v1.Cluster/JoinCertificate", "/opsd.v1.Cluster/Join"];

/// `grpc.reflection.v1.ServerReflectionRequest`, the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionRequest {
    #[prost(string, optional, tag = "4")]
    file_containing_symbol: Option<String>,
    #[prost(string, optional, tag = "7")]
    list_services: Option<String>,
}

/// `grpc.reflection.v1.ServerReflectionResponse`, the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
struct ReflectionResponse {
    #[prost(message, optional, tag = "4")]
    file_descriptor_response: Option<FileDescriptors>,
    #[prost(message, optional, tag = "6")]
    list_services_response: Option<ServiceList>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptors {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file_descriptor_proto: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceList {
    #[prost(message, repeated, tag = "1")]
    service: Vec<ServiceName>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceName {
    #[prost(string, tag = "1")]
    name: String,
}

async fn grpc(addr: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = access::endpoint(addr)
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tonic::client::Grpc::new(channel)
}

/// One reflection question, answered.
async fn reflect(addr: &str, request: ReflectionRequest) -> ReflectionResponse {
    let mut grpc = grpc(addr).await;
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    let codec = tonic_prost::ProstCodec::<ReflectionRequest, ReflectionResponse>::default();
    let mut answers = grpc
        .streaming(
            tonic::Request::new(tonic::codegen::tokio_stream::iter(vec![request])),
            path,
            codec,
        )
        .await
        .expect("reflection answers without a token")
        .into_inner();
    answers
        .message()
        .await
        .expect("a reflection answer")
        .expect("one reflection answer")
}

/// Every method of every `opsd.v1` service, as `/SERVICE/METHOD` paths.
async fn every_method(addr: &str) -> Vec<String> {
    let listed = reflect(
        addr,
        ReflectionRequest {
            list_services: Some(String::new()),
            ..Default::default()
        },
    )
    .await
    .list_services_response
    .expect("a service list");
    let services: Vec<String> = listed
        .service
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("opsd.v1."))
        .collect();
    assert!(
        services.len() >= 5,
        "the opsd.v1 services reflection lists: {services:?}"
    );
    let mut methods = Vec::new();
    for service in &services {
        let files = reflect(
            addr,
            ReflectionRequest {
                file_containing_symbol: Some(service.clone()),
                ..Default::default()
            },
        )
        .await
        .file_descriptor_response
        .expect("a file descriptor");
        for bytes in files.file_descriptor_proto {
            let file = FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor");
            for s in &file.service {
                let full = format!("{}.{}", file.package(), s.name());
                if &full != service {
                    continue;
                }
                for m in &s.method {
                    methods.push(format!("/{full}/{}", m.name()));
                }
            }
        }
    }
    methods.sort();
    methods.dedup();
    methods
}

/// Calls `path` with an empty request and `token` (if any); the status.
async fn call(addr: &str, path: &str, token: Option<&str>) -> tonic::Status {
    let mut grpc = grpc(addr).await;
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::try_from(path.to_string()).unwrap();
    match grpc.unary(request, path, codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// What the cluster holds, as the admin sees it: to show nothing changed.
async fn everything(addr: &str) -> String {
    let mut c = client::connect(addr);
    let settings = c
        .settings
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .settings;
    let kinds = c.resources.list_kinds(ListKindsRequest {}).await.unwrap().into_inner();
    let resources = c
        .resources
        .list(ListResourcesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let users = c.security.list_users(ListUsersRequest {}).await.unwrap().into_inner();
    let roles = c.security.list_roles(ListRolesRequest {}).await.unwrap().into_inner();
    let tokens = c
        .security
        .list_tokens(ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    let members = c.cluster.members(MembersRequest {}).await.unwrap().into_inner();
    let ids: Vec<u64> = members.members.iter().map(|m| m.id).collect();
    format!("{settings:?}\n{kinds:?}\n{resources:?}\n{users:?}\n{roles:?}\n{tokens:?}\n{ids:?}")
}

#[tokio::test]
async fn security_every_rpc_needs_a_token() {
    let cluster = Cluster::start(1, Options::default()).await;
    let addr = cluster.node(0).client_addr();
    client::put(&addr, "app/x", "1").await.expect("a setting as admin");

    // A token that worked, then was revoked.
    let revoked = access::make_user(&addr, "gone", &["*:*"], 0).await;
    let id = revoked.split('.').nth(1).unwrap().to_string();
    access::clients_with_token(&addr, Some(&revoked), Some(Duration::from_secs(15)))
        .settings
        .list(ListRequest::default())
        .await
        .expect("the token works before it is revoked");
    client::connect(&addr)
        .security
        .revoke_token(RevokeTokenRequest { id })
        .await
        .expect("revoke");

    let methods = every_method(&addr).await;
    for expected in [
        "/opsd.v1.Security/WhoAmI",
        "/opsd.v1.Settings/Put",
        "/opsd.v1.Resources/Do",
    ] {
        assert!(methods.iter().any(|m| m == expected), "{expected} in {methods:?}");
    }
    let before = everything(&addr).await;
    let malformed = "opsd1.not-a-token";
    let mut checked = 0;
    for path in &methods {
        let cases: [(&str, Option<&str>); 3] = [
            ("no token", None),
            ("a malformed token", Some(malformed)),
            ("a revoked token", Some(&revoked)),
        ];
        for (what, token) in cases {
            let status = call(&addr, path, token).await;
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{path} with {what}: {:?} {}",
                status.code(),
                status.message()
            );
            let expected = match token {
                None if JOIN_TOKEN_METHODS.contains(&path.as_str()) => "no join token",
                None => "no token",
                Some(t) if t == malformed => "malformed token",
                Some(_) => "unknown or revoked token",
            };
            assert!(
                status.message().contains(expected),
                "{path} with {what}: {}",
                status.message()
            );
            checked += 1;
        }
    }
    assert!(checked > 3 * 30, "only {checked} calls were checked: {methods:?}");
    assert_eq!(everything(&addr).await, before, "a refused call changed something");

    // Health answers without a token.
    let health = client::health(&addr).await.expect("health answers without a token");
    assert_eq!(health, tonic_health::ServingStatus::Serving);
}
