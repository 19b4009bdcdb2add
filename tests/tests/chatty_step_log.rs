//! A step that prints a few MB of log: its whole log stays on the node that
//! ran it (secrets masked there too), Raft carries only a bounded tail with
//! markers where lines were left out, and `logs` shows every line through
//! any node; once that node is gone, the replicated tail with a note. A
//! takeover's log starts with the dead node's replicated tail.

use std::time::Duration;

use opsd_tests::api::{LogLines, LogsRequest, PutRequest};
use opsd_tests::kinds::{self, chatty_line, CHATTY_LINE_BYTES};
use opsd_tests::resources as res;
use opsd_tests::{dir_bytes, Cluster, Options};

const WAIT: Duration = Duration::from_secs(120);
/// About 6 MB of numbered lines.
const LINES: u64 = 60_000;
const FIRST: &str = "first line of the chatty step";
const LAST: &str = "last line of the chatty step";
const SKIP_MARKER: &str = " not replicated; the whole log is on node ";

async fn put(addr: &str, key: &str, value: &str, secret: bool) {
    opsd_tests::client::connect(addr)
        .settings
        .put(PutRequest {
            key: key.into(),
            value: value.into(),
            expected_revision: None,
            reason: "chatty test".into(),
            secret: Some(secret),
        })
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Every chunk of a run's log, not following.
async fn log_chunks(addr: &str, run_id: &str) -> Vec<LogLines> {
    let mut stream = opsd_tests::client::connect_streaming(addr)
        .resources
        .logs(LogsRequest {
            run_id: run_id.into(),
            follow: false,
        })
        .await
        .unwrap_or_else(|e| panic!("logs {run_id} through {addr}: {e}"))
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.expect("the log stream") {
        chunks.push(chunk);
    }
    chunks
}

/// Asserts `lines` are the step's whole output, its token masked.
fn assert_whole(lines: &[String], through: &str) {
    assert_eq!(lines.len() as u64, LINES + 3, "through {through}: every line");
    assert_eq!(lines[0], FIRST, "through {through}");
    assert_eq!(lines[1], "token: ***", "through {through}");
    assert_eq!(lines[2], chatty_line(1), "through {through}");
    assert_eq!(
        lines[2 + LINES as usize / 2],
        chatty_line(LINES / 2 + 1),
        "through {through}"
    );
    assert_eq!(lines[LINES as usize + 1], chatty_line(LINES), "through {through}");
    assert_eq!(lines[LINES as usize + 2], LAST, "through {through}");
}

#[tokio::test]
async fn chatty_step_log() {
    let cluster = Cluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader(&[], opsd_tests::FORM_TIMEOUT).await;
    let addr = cluster.node(leader).client_addr();
    let secret = format!("chatty-s3cr3t-{}", std::process::id());
    res::apply_kind(&addr, kinds::CHATTY_STEP)
        .await
        .expect("apply the kind");
    put(&addr, "scope/kind/chatty/TOKEN", &secret, true).await;
    put(&addr, "scope/kind/chatty/LINES", &LINES.to_string(), false).await;
    put(&addr, "scope/kind/chatty/PAUSE", "2", false).await;
    let printed = LINES * CHATTY_LINE_BYTES;
    // Let every node apply the setup before measuring their data dirs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<u64> = cluster.nodes().iter().map(|n| dir_bytes(n.data_dir())).collect();

    let run = res::create(&addr, "chatty", "loud", serde_json::json!({}))
        .await
        .expect("create")
        .run
        .expect("a run");
    let runner = cluster.index_of(run.node_id).expect("the node running the step");
    let other = (runner + 1) % cluster.len();

    // Follow the replicated stream through another node while the step runs.
    let mut follow = opsd_tests::client::connect_streaming(&cluster.node(other).client_addr())
        .resources
        .logs(LogsRequest {
            run_id: run.run_id.clone(),
            follow: true,
        })
        .await
        .expect("follow the log")
        .into_inner();
    let mut followed: Vec<String> = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, follow.message())
        .await
        .expect("the followed log to end with the run")
        .expect("the followed log")
    {
        followed.extend(chunk.lines);
    }
    let done = res::wait_resting(&addr, "chatty", "loud", WAIT).await;
    assert_eq!(done.state, "printed", "{done:?}");
    let run = res::run(&addr, &run.run_id).await.expect("the run");
    assert_eq!(run.outcome().label(), "succeeded", "{run:?}");

    // The replicated stream is bounded, says what it left out, and ends as the output did.
    let followed_bytes: u64 = followed.iter().map(|l| l.len() as u64 + 1).sum();
    assert!(
        followed_bytes < printed / 4,
        "the replicated stream carried {followed_bytes} of {printed} bytes"
    );
    let marker = followed.iter().find(|l| l.contains(SKIP_MARKER)).unwrap_or_else(|| {
        panic!(
            "no marker in the replicated stream: {:?}",
            &followed[..followed.len().min(5)]
        )
    });
    assert!(marker.ends_with(&format!("{SKIP_MARKER}{}]", run.node_id)), "{marker}");
    assert_eq!(followed.first().map(String::as_str), Some(FIRST));
    assert_eq!(followed.last().map(String::as_str), Some(LAST));
    assert_eq!(followed[followed.len() - 2], chatty_line(LINES));

    // The whole log, through the node that ran it and through another one.
    for i in [runner, other] {
        let through = cluster.node(i).client_addr();
        let chunks = log_chunks(&through, &run.run_id).await;
        assert!(chunks.len() > 1, "a large log comes in chunks");
        assert!(chunks.iter().all(|c| c.note.is_empty() && c.dropped == 0));
        let lines: Vec<String> = chunks.into_iter().flat_map(|c| c.lines).collect();
        assert_whole(&lines, &through);
    }

    // The secret's value is masked in the file on the node that ran the step.
    let file = cluster
        .node(runner)
        .data_dir()
        .join("run-logs")
        .join(format!("{}-{}.log", run.run_id, run.attempt));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(text.starts_with(&format!("{FIRST}\ntoken: ***\n")), "{}", &text[..200]);
    for node in cluster.nodes() {
        for entry in std::fs::read_dir(node.data_dir().join("run-logs"))
            .into_iter()
            .flatten()
        {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&secret),
                "{} holds the secret",
                path.display()
            );
        }
    }

    // Raft did not carry the whole log: the other nodes grew by far less
    // than it; the node that ran it holds it.
    for (i, node) in cluster.nodes().iter().enumerate() {
        let grew = dir_bytes(node.data_dir()).saturating_sub(before[i]);
        if i == runner {
            assert!(
                grew >= printed,
                "node {}: grew {grew} bytes, the log is {printed}",
                node.id()
            );
        } else {
            assert!(
                grew < printed / 2,
                "node {}: grew {grew} bytes for a log of {printed}",
                node.id()
            );
        }
    }

    // The node that ran it is gone: the replicated tail, and a note saying why.
    cluster.node(runner).kill9();
    let survivor = cluster.wait_for_leader(&[runner], WAIT).await;
    let chunks = log_chunks(&cluster.node(survivor).client_addr(), &run.run_id).await;
    let note = &chunks[0].note;
    assert!(
        note.contains(&format!("node {}", run.node_id)) && note.contains("did not answer"),
        "{note}"
    );
    let lines: Vec<String> = chunks.into_iter().flat_map(|c| c.lines).collect();
    assert!(lines.iter().any(|l| l.contains(SKIP_MARKER)), "the markers remain");
    assert_eq!(lines.last().map(String::as_str), Some(LAST));
    assert!((lines.len() as u64) < LINES / 10, "{} lines", lines.len());

    // A takeover: the node running the step dies after printing its lines;
    // the new attempt's log starts with the dead node's replicated tail,
    // markers and all, then every line of the new attempt.
    cluster.node(runner).restart();
    cluster.node(runner).wait_ready(WAIT).await;
    let leader = cluster.wait_for_leader(&[], WAIT).await;
    let addr = cluster.node(leader).client_addr();
    put(&addr, "scope/kind/chatty/PAUSE", "0", false).await;
    put(&addr, "scope/kind/chatty/LINGER", "60", false).await;
    let again = res::do_event(&addr, "chatty", "loud", "again", &[], "again")
        .await
        .expect("again")
        .run
        .expect("a run");
    let dead = cluster.index_of(again.node_id).expect("the node running the step");
    let printed_all = || async {
        let lines = res::log_lines(&cluster.node(dead).client_addr(), &again.run_id)
            .await
            .map_err(|e| e.to_string())?;
        (lines.last() == Some(&chatty_line(LINES)))
            .then_some(())
            .ok_or(format!("{} lines", lines.len()))
    };
    opsd_tests::wait_until(
        "the step to print its lines",
        WAIT,
        Duration::from_millis(200),
        printed_all,
    )
    .await;
    // Its last lines are replicated at the next batch.
    tokio::time::sleep(Duration::from_secs(1)).await;
    put(&addr, "scope/kind/chatty/LINGER", "0", false).await;
    cluster.node(dead).kill9();
    let leader = cluster.wait_for_leader(&[dead], WAIT).await;
    let addr = cluster.node(leader).client_addr();
    let done = res::wait_resting(&addr, "chatty", "loud", WAIT).await;
    assert_eq!(done.state, "printed", "{done:?}");
    let run = res::run(&addr, &again.run_id).await.expect("the run");
    assert_eq!((run.outcome().label(), run.attempt), ("succeeded", 2), "{run:?}");
    let chunks = log_chunks(&addr, &again.run_id).await;
    assert!(chunks.iter().all(|c| c.note.is_empty()), "attempt 2's node is up");
    let lines: Vec<String> = chunks.into_iter().flat_map(|c| c.lines).collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("[opsd: attempt 2 starts here"))
        .expect("a line where attempt 2 starts");
    let earlier = &lines[..start];
    assert!(
        earlier
            .iter()
            .any(|l| l.ends_with(&format!("{SKIP_MARKER}{}]", again.node_id))),
        "the dead node's markers: {:?}",
        &earlier[..earlier.len().min(3)]
    );
    // The dead node's last line, then the line the takeover recorded.
    assert_eq!(
        earlier[earlier.len() - 2],
        chatty_line(LINES),
        "the dead node's last line"
    );
    assert!(
        earlier[earlier.len() - 1].starts_with("opsd: run taken over by node"),
        "{}",
        earlier[earlier.len() - 1]
    );
    assert_whole(&lines[start + 1..], "the new attempt's node");
}
