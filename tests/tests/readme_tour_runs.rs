//! The README's five-minute tour and docs/cluster.md's cluster on one
//! machine, run as written: every `sh` block, in order, in one bash, against
//! the real opsd processes those commands start (see `opsd_tests::tour` for
//! how hosts and paths are rewritten so tours run in parallel). A command that
//! fails fails the tour; a few of their outputs are checked, and opsd's logs
//! (stderr not a terminal here) must carry no colour codes.

use opsd_tests::tour::{self, TourOutput, DOC_PORTS};
use opsd_tests::{loopback_host, skip};

/// Runs the `sh` blocks of `page` (under `section`, if given) as a tour;
/// `None` if this machine has no loopback address with the documented ports free.
async fn run_tour(test: &str, page: &str, section: Option<&str>) -> Option<(TourOutput, tempfile::TempDir)> {
    let markdown = opsd_tests::docs::page(page);
    let blocks = tour::shell_blocks(&markdown, section);
    assert!(!blocks.is_empty(), "{page} has no sh blocks to run");
    let Some(host) = loopback_host(&DOC_PORTS) else {
        skip(test, "no loopback address has the documented ports (7700-7721) free");
        return None;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = tour::script(&blocks, &host.to_string(), dir.path());
    let output = tour::run(&script, dir.path()).await;
    // What a reader of the page would have seen (shown with --nocapture).
    eprintln!("--- {page}: what the tour printed\n{}", output.stdout);
    assert!(
        output.success,
        "the tour of {page} failed:\n--- stdout\n{}\n--- stderr\n{}",
        output.stdout, output.stderr
    );
    assert!(
        !output.stderr.contains('\x1b'),
        "opsd or opsctl wrote terminal escape codes to a file:\n{}",
        output.stderr
    );
    Some((output, dir))
}

/// Fails with the whole output unless `text` contains `needle`.
fn shows(output: &TourOutput, needle: &str, what: &str) {
    assert!(
        output.stdout.contains(needle),
        "{what}: {needle:?} not in the tour's output:\n--- stdout\n{}\n--- stderr\n{}",
        output.stdout,
        output.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_runs_as_written() {
    let Some((out, _dir)) = run_tour("readme_tour_runs", "README.md", Some("## A five-minute tour")).await else {
        return;
    };
    shows(
        &out,
        "postgres://db.internal:5432/app",
        "settings get through another node",
    );
    shows(&out, "unreachable for", "cluster members after the leader was killed");
    shows(&out, "\n20\n", "the restarted node's read of db/pool");
    // The history: who and why columns, and the deploy that was cancelled
    // (`cancelling` or `cancelled`, depending on how far the step got by then).
    shows(&out, "BY", "history's who column");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("ready→deploying") && l.contains("cancel") && l.contains("release 2")),
        "the history has no cancelled deploy with its reason:\n{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_runs_as_written() {
    let Some((out, _dir)) = run_tour("readme_tour_runs", "docs/cluster.md", None).await else {
        return;
    };
    shows(&out, "leader", "cluster members");
    shows(&out, "unreachable for", "cluster members after node 3 was killed");
    shows(&out, "refused, as it should be", "the removed node's answer");
    assert!(
        out.stderr.contains("was removed from the cluster"),
        "the removed node did not say so:\n{}",
        out.stderr
    );
}
