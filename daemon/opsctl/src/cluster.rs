//! `opsctl status` and `opsctl cluster ...`: the Raft cluster and its membership.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Subcommand;
use opsd_client::{Api, CallError, Nodes, Patience};
use opsd_proto::v1::{CreateJoinTokenRequest, MembersRequest, RemoveRequest, StatusRequest};

use crate::render::Printer;

/// Commands that show or change the cluster's membership.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the cluster's members as the leader sees them: id, client and
    /// peer address, role (leader, follower or learner), whether it answers
    /// the leader (`unreachable for 12.0s`), its matched log index and its lag.
    ///
    /// A follower asks the leader. If it cannot (no leader, or the leader
    /// does not answer), it prints its own view (roles only) with a note on
    /// stderr. With --output json, an array of members, each with id, addr,
    /// peer_addr, voter, role, reachability (reachable, unreachable or
    /// unknown), since_contact_ms, matched_index and lag (null when unknown).
    /// A removed node refuses, saying it was removed.
    Members,
    /// Remove a node (voter or learner) from the cluster, then list the members left.
    ///
    /// Any member accepts the request and forwards it to the leader. The
    /// removed node is told so and refuses further requests; the last voter
    /// cannot be removed.
    Remove {
        /// The id of the node to remove, as `opsctl cluster members` shows it.
        #[arg(value_name = "NODE_ID")]
        node_id: u64,
    },
    /// Make a single-use join token and print it: a new node started with
    /// `opsd --join HOST:PORT --join-token TOKEN` gets its certificate from
    /// the member it contacts (trusting it by the CA fingerprint the token
    /// carries) and joins. Needs admin on the cluster. The cluster keeps
    /// only a digest of the token: it is shown once.
    JoinToken {
        /// How long the token is good for (e.g. 30m, 2h; at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// How often `status --wait` goes round the addresses.
const WAIT_ROUND: Duration = Duration::from_millis(200);

/// `opsctl status`: the answering node's own view of the cluster. With
/// `wait`, asked again until a node answers and knows a leader, or that long
/// has passed: then a node's answer without a leader is printed with a note,
/// and no answer at all is an error naming every address.
pub async fn status(nodes: &Nodes, wait: Option<Duration>, printer: Printer) -> Result<()> {
    let ask = |mut api: Api| async move { api.cluster.status(StatusRequest {}).await };
    let Some(limit) = wait else {
        printer.status(&nodes.call(ask).await?)?;
        return Ok(());
    };
    let deadline = Instant::now() + limit;
    loop {
        let patience = Patience {
            limit: deadline.saturating_duration_since(Instant::now()),
            pause: WAIT_ROUND,
        };
        let status = match nodes.call_patiently(0, patience, ask).await {
            Ok((_, status)) => status,
            Err(e @ CallError::Unreachable(_)) => {
                bail!("no node answered within {}: {e}", humantime::format_duration(limit))
            }
            Err(e) => return Err(e.into()),
        };
        if status.leader_id != 0 || Instant::now() >= deadline {
            if status.leader_id == 0 {
                eprintln!(
                    "note: node {} answered, but knows no leader after {}",
                    status.node_id,
                    humantime::format_duration(limit)
                );
            }
            printer.status(&status)?;
            return Ok(());
        }
        tokio::time::sleep(WAIT_ROUND.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Runs one `opsctl cluster ...` command.
pub async fn run(command: ClusterCommand, nodes: &Nodes, printer: Printer) -> Result<()> {
    match command {
        ClusterCommand::Members => {
            let answer = nodes
                .call(|mut api| async move { api.cluster.members(MembersRequest {}).await })
                .await?;
            printer.members(&answer)?;
        }
        ClusterCommand::Remove { node_id } => {
            let answer = nodes
                .write_with(&RemoveRequest { node_id }, |mut api, r| async move {
                    api.cluster.remove(r).await
                })
                .await?;
            printer.membership(&answer.members)?;
        }
        ClusterCommand::JoinToken { ttl } => {
            let ms = ttl.as_millis() as u64;
            let request = CreateJoinTokenRequest {
                ttl: Some(opsd_proto::time::duration(ms)),
            };
            let answer = nodes
                .write_with(
                    &request,
                    |mut api, r| async move { api.cluster.create_join_token(r).await },
                )
                .await?;
            printer.join_token(&answer)?;
        }
    }
    Ok(())
}
