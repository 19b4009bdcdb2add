//! The chatty step: a 3-node cluster runs a step that prints a large log
//! while 16 clients put settings. It measures how much each node's data dir
//! grows for the bytes printed, the largest RSS of a node during the step,
//! put p99 during the step against idle, and whether `logs` afterwards, asked
//! of a node that did not run the step, gives the whole log or says where it
//! was cut.

use std::time::{Duration, Instant};

use opsd_tests::kinds::{self, CHATTY_LINE_BYTES};
use opsd_tests::resources as res;
use opsd_tests::{client, dir_bytes, Cluster, Options};

use super::load::{self, RowResult, System, Workload};

/// Put clients, idle and during the step.
pub const CLIENTS: usize = 16;
/// The keys the puts write.
const KEYSPACE: u64 = 10_000;
/// The last line the step prints.
const LAST: &str = "last line of the chatty step";
/// How a node's log file that reached its bound ends (see the daemon's `run_logs`).
const CUT_MARKER: &str = "[opsd: the log on this node was cut here";

/// What the part measured.
#[derive(Debug)]
pub struct Chatty {
    /// Bytes the step printed.
    pub printed: u64,
    /// How long the step took, from the create to the run's end.
    pub step: Duration,
    /// The largest data dir growth of a node over `printed`.
    pub amplification: f64,
    /// Each node's data dir growth, bytes.
    pub growth: Vec<u64>,
    /// The largest RSS of any node sampled during the step, MiB.
    pub rss_mb: f64,
    /// Puts while idle.
    pub idle: RowResult,
    /// Puts while the step ran.
    pub busy: RowResult,
    /// What `logs` gave: the whole log, or where it was cut, or what is wrong.
    pub log: String,
}

/// Runs the part with a step printing about `mb` MB.
pub async fn measure(mb: u64, warmup: Duration, measure: Duration) -> Chatty {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.leader().await;
    let addr = cluster.node(leader).client_addr();
    res::apply_kind(&addr, kinds::CHATTY_STEP)
        .await
        .expect("applying the chatty kind");
    let lines = (mb * 1_000_000 / CHATTY_LINE_BYTES).max(1);
    client::put(&addr, "scope/kind/chatty/LINES", &lines.to_string())
        .await
        .expect("putting LINES");
    let system = System::Opsd(addr.parse().expect("HOST:PORT"));
    let idle = load::run_row(system, Workload::Put, CLIENTS, KEYSPACE, warmup, measure).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<u64> = cluster.nodes().iter().map(|n| dir_bytes(n.data_dir())).collect();

    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let far = started + Duration::from_secs(24 * 3600);
    let puts = tokio::spawn(load::drive(
        system,
        Workload::Put,
        CLIENTS,
        KEYSPACE,
        (started, far),
        async move {
            let _ = stopped.await;
        },
    ));
    let run = res::create(&addr, "chatty", "loud", serde_json::json!({}))
        .await
        .expect("creating chatty/loud")
        .run
        .expect("the create starts a run");
    let mut rss_mb: f64 = 0.0;
    loop {
        for node in cluster.nodes() {
            rss_mb = rss_mb.max(node.rss_mb());
        }
        if res::run(&addr, &run.run_id)
            .await
            .is_ok_and(|r| r.outcome().label() != "running")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let step = started.elapsed();
    let _ = stop.send(());
    let busy = puts.await.expect("the put load").into_row(step);

    // Every node has applied the end (a linearizable read through each), then sizes.
    let printed = lines * CHATTY_LINE_BYTES;
    let mut log = String::new();
    for node in cluster.nodes() {
        let got = res::log_lines(&node.client_addr(), &run.run_id).await;
        if node.id() != run.node_id {
            log = match got {
                Err(e) => format!("logs failed: {e}"),
                Ok(l) if l.len() as u64 == lines + 3 && l.last().map(String::as_str) == Some(LAST) => {
                    format!("whole ({} lines)", l.len())
                }
                Ok(l) => match l.iter().position(|line| line.starts_with(CUT_MARKER)) {
                    Some(at) => format!("cut at line {at} of {}, marked", lines + 3),
                    None => format!("INCOMPLETE: {} of {} lines, no cut marker", l.len(), lines + 3),
                },
            };
        }
    }
    let growth: Vec<u64> = cluster
        .nodes()
        .iter()
        .zip(&before)
        .map(|(n, b)| dir_bytes(n.data_dir()).saturating_sub(*b))
        .collect();
    let amplification = growth.iter().copied().max().unwrap_or(0) as f64 / printed as f64;
    Chatty {
        printed,
        step,
        amplification,
        growth,
        rss_mb,
        idle,
        busy,
        log,
    }
}
