//! `opsd-bench`: measures opsd side by side with etcd, on the same machine,
//! with the same client harness, so a claim about opsd's speed has a number
//! and a reference point behind it. `make bench` builds everything in release
//! and runs it; docs/BENCHMARKS.md explains the workloads and the results.
//!
//! In one run it starts a 3-node opsd cluster and a 3-member etcd cluster on
//! loopback (data under `target/bench/data`), drives puts and linearizable
//! reads at 1, 16, 64 and 256 clients against each leader, then measures
//! opsd alone: no-op transitions, leader failover, a new node catching up
//! with 100k keys, and restart time and memory of a node holding 100k
//! resources; and the built-in load balancer: HTTP requests through it
//! against straight to a backend at 64 connections, and how soon a service's
//! swap reaches every node; and a step printing a large log (data dir growth,
//! memory, puts meanwhile). It prints a table and writes
//! `target/bench/results.json`.
//!
//! Environment (all optional):
//! - `BENCH_SECONDS`: measured seconds per row and for the transitions (default 20).
//! - `BENCH_CLIENTS`: comma-separated client counts (default `1,16,64,256`).
//! - `BENCH_PARTS`: which parts to run, comma-separated, of `rows`,
//!   `transitions`, `failover`, `join`, `lb`, `resources`, `chatty` (default all).
//! - `BENCH_RESOURCES` (default 100000), `BENCH_JOIN_KEYS` (default 100000),
//!   `BENCH_KILLS` (default 20), `BENCH_CREATE_BUDGET_S` (default 900: stop
//!   creating resources after this long and report how many were made),
//!   `BENCH_SWAPS` (default 10: swaps of the load-balancer part),
//!   `BENCH_CHATTY_MB` (default 100: what the chatty step prints).
//! - `BENCH_DIR`: where data dirs and results go (default `<workspace>/target/bench`).
//! - `OPSD_BIN_DIR`: the opsd binaries (default `<workspace>/target/release`).
//! - `ETCD_BIN`: the etcd binary (default `etcd` from `PATH`).

#[path = "../bench/mod.rs"]
mod bench;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bench::chatty;
use bench::etcd::{self, EtcdCluster};
use bench::figures;
use bench::lb;
use bench::load::{self, System, Workload};
use bench::report::{self, Figures, Row};
use opsd_tests::{Cluster, Options};

/// The keys the rows write and read: every one is written before the reads.
const KEYSPACE: u64 = 10_000;
/// Concurrent resources for the transition figure.
const TRANSITION_WORKERS: usize = 100;
/// Every part, in the order they run.
const PARTS: [&str; 7] = ["rows", "transitions", "failover", "join", "lb", "resources", "chatty"];

/// What one run does, from the environment.
struct Config {
    seconds: u64,
    clients: Vec<usize>,
    parts: Vec<String>,
    resources: u64,
    join_keys: u64,
    kills: usize,
    swaps: usize,
    chatty_mb: u64,
    create_budget: Duration,
    workspace: PathBuf,
    dir: PathBuf,
}

/// `$name` parsed, or `default` if unset; exits naming the variable if it does not parse.
fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a valid value");
            std::process::exit(2)
        }),
        _ => default,
    }
}

impl Config {
    fn from_env() -> Config {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_string())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let clients = list("BENCH_CLIENTS", "1,16,64,256")
            .iter()
            .map(|c| match c.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    eprintln!("BENCH_CLIENTS: {c:?} is not a positive number");
                    std::process::exit(2)
                }
            })
            .collect();
        let parts = list("BENCH_PARTS", &PARTS.join(","));
        if let Some(p) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
            eprintln!("BENCH_PARTS: unknown part {p:?}; the parts are {}", PARTS.join(", "));
            std::process::exit(2);
        }
        Config {
            seconds: env_or("BENCH_SECONDS", 20u64).max(1),
            clients,
            parts,
            resources: env_or("BENCH_RESOURCES", 100_000u64),
            join_keys: env_or("BENCH_JOIN_KEYS", 100_000u64),
            kills: env_or("BENCH_KILLS", 20usize),
            swaps: env_or("BENCH_SWAPS", 10usize),
            chatty_mb: env_or("BENCH_CHATTY_MB", 100u64),
            create_budget: Duration::from_secs(env_or("BENCH_CREATE_BUDGET_S", 900u64)),
            dir: std::env::var_os("BENCH_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target").join("bench")),
            workspace,
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

fn main() {
    let config = Config::from_env();
    // Every data dir (opsd's through the harness's temp dirs, etcd's) goes under
    // target/bench/data, on the same disk; leftovers of an aborted run go first.
    let data = config.dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("removing the old {}: {e}", data.display()));
    }
    std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("creating {}: {e}", data.display()));
    let _ = tempfile::env::override_temp_dir(&data);
    if std::env::var_os("OPSD_BIN_DIR").is_none_or(|v| v.is_empty()) {
        // Set before any thread starts; the harness reads it to find the binaries.
        std::env::set_var("OPSD_BIN_DIR", config.workspace.join("target").join("release"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    runtime.block_on(run(config, data));
}

/// Prints a line now (the run is long; progress matters).
macro_rules! say {
    ($($t:tt)*) => { eprintln!("[bench] {}", format!($($t)*)) };
}

async fn run(config: Config, data: PathBuf) {
    let etcd_version = if config.wants("rows") {
        etcd::version().unwrap_or_else(|e| panic!("{e:#}"))
    } else {
        "not run".to_string()
    };
    let machine = report::machine(&config.workspace, &config.dir, &etcd_version);
    for line in &machine {
        say!("{line}");
    }
    say!(
        "{} s per row, clients {:?}, parts {:?}, opsd binaries from {}",
        config.seconds,
        config.clients,
        config.parts,
        opsd_tests::bin_dir().display()
    );
    let measure = Duration::from_secs(config.seconds);
    let warmup = Duration::from_secs_f64((config.seconds as f64 / 4.0).clamp(0.5, 2.0));
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut figs = Figures::default();

    if ["rows", "transitions", "failover", "join"]
        .iter()
        .any(|p| config.wants(p))
    {
        let mut cluster = Cluster::start(3, Options::default()).await;
        let term_before = leader_term(&cluster).await;
        if config.wants("rows") {
            rows = compare(&config, &cluster, &data, warmup, measure, &mut notes).await;
        }
        if config.wants("transitions") {
            let spawn = tokio::task::spawn_blocking(move || figures::spawn_rate(measure.min(Duration::from_secs(10))))
                .await
                .expect("the spawn-rate workers panicked");
            say!("bare `sh -c true` spawns with every core busy: {spawn:.0}/s");
            figs.spawn_per_s = Some(spawn);
            let leader = cluster.leader().await;
            let t =
                figures::transitions(&cluster.node(leader).client_addr(), TRANSITION_WORKERS, warmup, measure).await;
            say!(
                "transitions at {TRANSITION_WORKERS} concurrent: {} in {measure:?} = {:.1}/s, p50 {:.1} ms, p99 {:.1} ms, \
                 {} Do calls refused as in flight and retried, {} errors{}",
                t.completed,
                t.per_s,
                t.p50_ms,
                t.p99_ms,
                t.refused,
                t.errors,
                t.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            );
            say!(
                "transitions / bare spawns: {:.2}",
                t.per_s / spawn.max(f64::MIN_POSITIVE)
            );
            // Little's law: with every worker always waiting on one transition, the mean
            // latency is workers / rate, and the p99 is at least the mean.
            let needed = TRANSITION_WORKERS as f64 / 0.060;
            say!(
                "a p99 of 60 ms at {TRANSITION_WORKERS} concurrent needs at least {needed:.0} transitions/s \
                 (Little's law), {:.2} of this run's bare spawn rate",
                needed / spawn.max(f64::MIN_POSITIVE)
            );
            if t.refused > 0 {
                notes.push(format!(
                    "transitions: {} Do calls were refused as \"run in flight\" although the watch had shown the \
                     resource at rest, and were retried 2 ms later (their latency counts from the first try)",
                    t.refused
                ));
            }
            if t.errors > 0 {
                notes.push(format!("transitions: {} errors, first: {:?}", t.errors, t.first_error));
            }
            figs.transitions_per_s = Some(t.per_s);
            figs.transition_p99_ms = Some(t.p99_ms);
        }
        // Under the rows' and the transitions' load no node should have
        // missed its leader's heartbeats for a whole election timeout.
        let elections = leader_term(&cluster).await - term_before;
        say!("elections under load (the leader's term moved by): {elections}");
        if elections > 0 {
            notes.push(format!(
                "{elections} election(s) under the rows' and transitions' load: a node missed its leader's heartbeats"
            ));
        }
        if config.wants("failover") && config.kills > 0 {
            let mut times = figures::failover(&cluster, config.kills).await;
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let median = if times.len() % 2 == 1 {
                ms(times[times.len() / 2])
            } else {
                (ms(times[times.len() / 2 - 1]) + ms(times[times.len() / 2])) / 2.0
            };
            say!(
                "failover over {} kills: median {median:.0} ms, max {:.0} ms, all {:?}",
                times.len(),
                ms(times[times.len() - 1]),
                times.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
            );
            figs.failover_ms_median = Some(median);
            figs.failover_ms_max = Some(ms(times[times.len() - 1]));
        }
        if config.wants("join") {
            let j = figures::join_catchup(&mut cluster, config.join_keys).await;
            say!(
                "a new node caught up with {} keys (applied index {}) in {} ms",
                config.join_keys,
                j.index,
                j.catchup.as_millis()
            );
            notes.push(format!(
                "join: the {} keys were written in {:.1} s ({:.0}/s at 256 clients); the new node caught up to applied index {}",
                config.join_keys,
                j.fill.as_secs_f64(),
                config.join_keys as f64 / j.fill.as_secs_f64(),
                j.index
            ));
            figs.join_catchup_ms = Some(j.catchup.as_secs_f64() * 1000.0);
        }
        drop(cluster);
    }

    if config.wants("lb") {
        // A failure of this part (a panic in the harness, say on a build without
        // services) is reported as a note; the other parts' figures still count.
        let part = tokio::spawn(lb::measure(warmup, measure, config.swaps)).await;
        let part = part.unwrap_or_else(|e| {
            let why = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
                Err(e) => e.to_string(),
            };
            // The note is one line: the message's lines joined, its start only.
            let why: String = why
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" / ");
            Err(format!(
                "the part failed: {}",
                why.chars().take(400).collect::<String>()
            ))
        });
        match part {
            Ok(f) => {
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                let mut times = f.swaps.clone();
                times.sort();
                say!(
                    "HTTP at {} connections: through the load balancer {:.0}/s (p99 {:.2} ms), straight to the \
                     backend {:.0}/s (p99 {:.2} ms), ratio {:.2}",
                    lb::CONNECTIONS,
                    f.through_lb.ops_per_s,
                    f.through_lb.p99_ms,
                    f.direct.ops_per_s,
                    f.direct.p99_ms,
                    f.ratio()
                );
                for (what, r) in [
                    ("through the load balancer", &f.through_lb),
                    ("straight to the backend", &f.direct),
                ] {
                    if r.errors > 0 {
                        notes.push(format!(
                            "lb: HTTP {what}: {} errors, first: {}",
                            r.errors,
                            r.first_error.as_deref().unwrap_or("?")
                        ));
                    }
                }
                figs.lb_rps = Some(f.through_lb.ops_per_s);
                figs.lb_p99_ms = Some(f.through_lb.p99_ms);
                figs.direct_rps = Some(f.direct.ops_per_s);
                figs.direct_p99_ms = Some(f.direct.p99_ms);
                figs.lb_ratio = Some(f.ratio());
                match &f.haproxy {
                    Some(h) => {
                        say!(
                            "HTTP through HAProxy: {:.0}/s (p99 {:.2} ms), ratio to straight {:.2}; opsd's load balancer / HAProxy {:.2}",
                            h.ops_per_s,
                            h.p99_ms,
                            h.ops_per_s / f.direct.ops_per_s.max(f64::MIN_POSITIVE),
                            f.through_lb.ops_per_s / h.ops_per_s.max(f64::MIN_POSITIVE)
                        );
                        figs.haproxy_rps = Some(h.ops_per_s);
                        figs.haproxy_p99_ms = Some(h.p99_ms);
                    }
                    None => notes.push("lb: HAProxy not measured (not installed)".into()),
                }
                if !times.is_empty() {
                    let median = if times.len() % 2 == 1 {
                        ms(times[times.len() / 2])
                    } else {
                        (ms(times[times.len() / 2 - 1]) + ms(times[times.len() / 2])) / 2.0
                    };
                    say!(
                        "swap to every node routing new connections, over {} swaps: median {median:.1} ms, max {:.1} ms",
                        times.len(),
                        ms(times[times.len() - 1])
                    );
                    figs.swap_switch_ms_median = Some(median);
                    figs.swap_switch_ms_max = Some(ms(times[times.len() - 1]));
                }
            }
            Err(why) => {
                say!("lb: not measured: {why}");
                notes.push(format!("lb: not measured: {why}"));
            }
        }
    }

    if config.wants("resources") {
        let r = figures::many_resources(config.resources, config.create_budget).await;
        say!(
            "idle RSS {:.1} MiB; created {} resources in {:.1?} ({:.0}/s); RSS after creating {:.1} MiB; \
             restart to serving {} ms; RSS after restart {:.1} MiB",
            r.idle_rss_mb,
            r.created,
            r.create_time,
            r.created as f64 / r.create_time.as_secs_f64(),
            r.rss_after_create_mb,
            r.restart_serving.as_millis(),
            r.rss_after_restart_mb
        );
        notes.push(format!(
            "resources: created {} of {} resources in {:.1} s ({:.0}/s, 256 clients, one node); RSS {:.1} MiB right after \
             creating them, {:.1} MiB 5 s after the restart",
            r.created,
            config.resources,
            r.create_time.as_secs_f64(),
            r.created as f64 / r.create_time.as_secs_f64(),
            r.rss_after_create_mb,
            r.rss_after_restart_mb
        ));
        figs.idle_rss_mb = Some(r.idle_rss_mb);
        figs.restart_serving_ms_100k = Some(r.restart_serving.as_secs_f64() * 1000.0);
        figs.rss_mb_100k = Some(r.rss_after_create_mb.max(r.rss_after_restart_mb));
    }

    if config.wants("chatty") {
        let c = chatty::measure(config.chatty_mb, warmup, measure).await;
        let ratio = c.busy.p99_ms / c.idle.p99_ms.max(f64::MIN_POSITIVE);
        say!(
            "chatty step: printed {:.1} MB in {:.1?}; data dir growth per node {:?} bytes, amplification {:.3}; max RSS \
             {:.1} MiB; put p99 at {} clients idle {:.2} ms, during the step {:.2} ms ({:.0}/s), ratio {ratio:.2}; logs: {}",
            c.printed as f64 / 1e6,
            c.step,
            c.growth,
            c.amplification,
            c.rss_mb,
            chatty::CLIENTS,
            c.idle.p99_ms,
            c.busy.p99_ms,
            c.busy.ops_per_s,
            c.log
        );
        notes.push(format!(
            "chatty: a step printed {:.1} MB in {:.1} s; data dir growth per node {:?} bytes; logs through another node: {}",
            c.printed as f64 / 1e6,
            c.step.as_secs_f64(),
            c.growth,
            c.log
        ));
        for (what, r) in [("idle", &c.idle), ("during the step", &c.busy)] {
            if r.errors > 0 {
                notes.push(format!(
                    "chatty: puts {what}: {} errors, first: {}",
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
        figs.log_amplification = Some(c.amplification);
        figs.chatty_rss_mb = Some(c.rss_mb);
        figs.chatty_put_p99_ratio = Some(ratio);
    }

    let mut text = String::new();
    text.push_str(&machine.iter().map(|l| format!("- {l}\n")).collect::<String>());
    text.push_str(&format!(
        "- {} s measured per row after {:.1} s of warm-up\n\n",
        config.seconds,
        warmup.as_secs_f64()
    ));
    if !rows.is_empty() {
        text.push_str(&report::table(&rows));
        text.push('\n');
    }
    text.push_str(&report::figures_table(&figs));
    text.push('\n');
    text.push_str(&report::targets_table(&rows, &figs));
    if !notes.is_empty() {
        text.push('\n');
        text.push_str(&notes.iter().map(|n| format!("- {n}\n")).collect::<String>());
    }
    println!("\n{text}");
    let json = report::to_json(&rows, &figs);
    let results = config.dir.join("results.json");
    let pretty = serde_json::to_string_pretty(&json).expect("the results are plain JSON values");
    std::fs::write(&results, pretty + "\n").unwrap_or_else(|e| panic!("writing {}: {e}", results.display()));
    let human = config.dir.join("results.md");
    std::fs::write(&human, &text).unwrap_or_else(|e| panic!("writing {}: {e}", human.display()));
    say!("wrote {} and {}", results.display(), human.display());
    let _ = std::fs::remove_dir_all(&data);
}

/// The current leader's term.
async fn leader_term(cluster: &Cluster) -> u64 {
    let leader = cluster.leader().await;
    let status = cluster.node(leader).status().await;
    status.unwrap_or_else(|e| panic!("the leader's status: {e}")).term
}

/// The put and get rows: opsd and etcd in turn for each client count, each
/// against its current leader, after writing every key of the key space to both.
async fn compare(
    config: &Config,
    cluster: &Cluster,
    data: &Path,
    warmup: Duration,
    measure: Duration,
    notes: &mut Vec<String>,
) -> Vec<Row> {
    let etcd = EtcdCluster::start(3, &data.join("etcd"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let opsd_at = || async {
        let l = cluster.leader().await;
        System::Opsd(cluster.node(l).client_addr().parse().expect("HOST:PORT"))
    };
    let etcd_at = || async {
        let l = etcd.leader().await.unwrap_or_else(|e| panic!("{e:#}"));
        System::Etcd(etcd.members[l].client)
    };
    let took = load::fill(opsd_at().await, 64, KEYSPACE, load::key).await;
    say!("opsd: wrote the {KEYSPACE} keys in {took:.1?}");
    let took = load::fill(etcd_at().await, 64, KEYSPACE, load::key).await;
    say!("etcd: wrote the {KEYSPACE} keys in {took:.1?}");
    let mut rows = Vec::new();
    for workload in [Workload::Put, Workload::Get] {
        for &clients in &config.clients {
            let opsd = load::run_row(opsd_at().await, workload, clients, KEYSPACE, warmup, measure).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let etcd = load::run_row(etcd_at().await, workload, clients, KEYSPACE, warmup, measure).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (system, r) in [("opsd", &opsd), ("etcd", &etcd)] {
                if r.errors > 0 {
                    let note = format!(
                        "{} {clients} clients on {system}: {} errors, first: {}",
                        workload.name(),
                        r.errors,
                        r.first_error.as_deref().unwrap_or("?")
                    );
                    say!("{note}");
                    notes.push(note);
                }
            }
            let row = Row {
                workload: workload.name(),
                clients,
                opsd,
                etcd,
            };
            say!(
                "{} {clients:>3} clients: opsd {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), etcd {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), ratio {:.2}",
                row.workload,
                row.opsd.ops_per_s,
                row.opsd.p50_ms,
                row.opsd.p99_ms,
                row.etcd.ops_per_s,
                row.etcd.p50_ms,
                row.etcd.p99_ms,
                row.ratio()
            );
            rows.push(row);
        }
    }
    rows
}
