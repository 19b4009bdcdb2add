//! The one client of opsd's public gRPC API (`proto/opsd/v1`), shared by
//! `opsctl`, a node joining a cluster and the end-to-end tests, so that
//! failover, credentials and timeouts are written once:
//!
//! - [`NodeAddr`]: a node's client address, `HOST:PORT`, checked when parsed.
//! - [`Credentials`]: who is asking, sent with every request (a bearer
//!   token, `authorization: Bearer opsd1.ID.SECRET`).
//! - [`Api`]: the five services of one node, every request carrying the
//!   credentials.
//! - [`Nodes`]: a request with address failover over several nodes, with a
//!   connect timeout and a per-request timeout.
//!
//! Resuming streams: a broken stream ([`is_stream_break`]) is reopened through
//! the next address with [`Nodes::call_patiently`], which waits out a leader
//! election or a restarting node. A resource watch resumes by re-reading (its
//! first message is the resource as it is), which `opsctl --wait` does. A
//! settings watch resumes with [`SettingsWatch`]: the server keeps no history
//! to replay from a revision, so it watches again and re-reads the prefix,
//! reporting what changed meanwhile (coalesced) and nothing twice.

mod address;
mod credentials;
mod failover;
mod settings_watch;

use opsd_proto::v1::cluster_client::ClusterClient;
use opsd_proto::v1::resources_client::ResourcesClient;
use opsd_proto::v1::security_client::SecurityClient;
use opsd_proto::v1::services_client::ServicesClient;
use opsd_proto::v1::settings_client::SettingsClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use address::NodeAddr;
pub use credentials::Credentials;
pub use failover::{describe_status, is_stream_break, tls_advice, CallError, Failure, Nodes, Patience, Timeouts};
pub use settings_watch::{SettingsWatch, WatchItem};

/// A channel whose every request carries the caller's [`Credentials`].
pub type AuthChannel = InterceptedService<Channel, Credentials>;
/// `opsd.v1.Cluster` with credentials.
pub type ClusterApi = ClusterClient<AuthChannel>;
/// `opsd.v1.Settings` with credentials.
pub type SettingsApi = SettingsClient<AuthChannel>;
/// `opsd.v1.Resources` with credentials.
pub type ResourcesApi = ResourcesClient<AuthChannel>;
/// `opsd.v1.Services` with credentials.
pub type ServicesApi = ServicesClient<AuthChannel>;
/// `opsd.v1.Security` with credentials.
pub type SecurityApi = SecurityClient<AuthChannel>;

/// The client API of one node: its five services over one channel, every
/// request carrying the same credentials. Cheap to clone (clones share the
/// connection).
#[derive(Debug, Clone)]
pub struct Api {
    /// The node's client address, HOST:PORT, for messages.
    pub addr: String,
    /// `opsd.v1.Cluster`: status and membership.
    pub cluster: ClusterApi,
    /// `opsd.v1.Settings`: the replicated key/value store.
    pub settings: SettingsApi,
    /// `opsd.v1.Resources`: kinds, resources, runs.
    pub resources: ResourcesApi,
    /// `opsd.v1.Services`: the load balancers and discovery.
    pub services: ServicesApi,
    /// `opsd.v1.Security`: users, roles and tokens.
    pub security: SecurityApi,
}

impl Api {
    /// The API of the node at `addr` over an existing `channel` (for callers
    /// that tune their own endpoint, as the fault suite does).
    pub fn from_channel(addr: impl Into<String>, channel: Channel, credentials: Credentials) -> Self {
        Self {
            addr: addr.into(),
            cluster: ClusterClient::with_interceptor(channel.clone(), credentials.clone()),
            settings: SettingsClient::with_interceptor(channel.clone(), credentials.clone()),
            resources: ResourcesClient::with_interceptor(channel.clone(), credentials.clone()),
            services: ServicesClient::with_interceptor(channel.clone(), credentials.clone()),
            security: SecurityClient::with_interceptor(channel, credentials),
        }
    }

    /// The API of the node at `addr`, connecting on the first request (and
    /// reconnecting on the next one after the node comes back), with
    /// `timeouts`: its request timeout bounds every call up to its answer (for
    /// a stream, its first message), none if `None`. Must be called inside a
    /// tokio runtime.
    pub fn lazy(addr: &NodeAddr, timeouts: Timeouts, credentials: Credentials) -> Self {
        let channel = addr.endpoint(timeouts, &credentials).connect_lazy();
        Self::from_channel(addr.to_string(), channel, credentials)
    }

    /// The API of the node at `addr`, connected now: fails if the node cannot
    /// be reached within the connect timeout.
    pub async fn connect(
        addr: &NodeAddr,
        timeouts: Timeouts,
        credentials: Credentials,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = addr.endpoint(timeouts, &credentials).connect().await?;
        Ok(Self::from_channel(addr.to_string(), channel, credentials))
    }
}
