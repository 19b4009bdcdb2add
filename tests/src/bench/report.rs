//! What the bench prints and writes: the human table, `results.json` in the
//! shape docs/BENCHMARKS.md documents, and a description of the machine the
//! numbers came from (they mean little without it).

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use super::load::RowResult;

/// One row of the comparison: the same workload and client count on both systems.
#[derive(Debug)]
pub struct Row {
    /// `put` or `get`.
    pub workload: &'static str,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// opsd's result.
    pub opsd: RowResult,
    /// etcd's result.
    pub etcd: RowResult,
}

impl Row {
    /// opsd's throughput over etcd's: above 1, opsd did more; 0 if etcd did nothing.
    pub fn ratio(&self) -> f64 {
        if self.etcd.ops_per_s > 0.0 {
            self.opsd.ops_per_s / self.etcd.ops_per_s
        } else {
            0.0
        }
    }
}

/// The opsd-only figures; `None` for a part that was not run.
#[derive(Debug, Default)]
pub struct Figures {
    /// No-op transitions completed per second at 100 concurrent resources.
    pub transitions_per_s: Option<f64>,
    /// 99th-percentile latency from Do to rest, ms.
    pub transition_p99_ms: Option<f64>,
    /// Median time from kill -9 of the leader to the next acknowledged write, ms.
    pub failover_ms_median: Option<f64>,
    /// The longest of those, ms.
    pub failover_ms_max: Option<f64>,
    /// From a new node's start to its applied index equal to the leader's, with 100k keys, ms.
    pub join_catchup_ms: Option<f64>,
    /// From restarting a node holding 100k resources to its first linearizable read, ms.
    pub restart_serving_ms_100k: Option<f64>,
    /// RSS of a node holding 100k resources, MiB.
    pub rss_mb_100k: Option<f64>,
    /// RSS of a fresh idle node, MiB.
    pub idle_rss_mb: Option<f64>,
    /// HTTP requests per second through a node's load balancer to one
    /// backend, 64 kept-alive connections.
    pub lb_rps: Option<f64>,
    /// 99th-percentile latency of those, ms.
    pub lb_p99_ms: Option<f64>,
    /// HTTP requests per second straight to the same backend, 64 kept-alive connections.
    pub direct_rps: Option<f64>,
    /// 99th-percentile latency of those, ms.
    pub direct_p99_ms: Option<f64>,
    /// `lb_rps` over `direct_rps`: 1.0 means the load balancer costs nothing.
    pub lb_ratio: Option<f64>,
    /// HTTP requests per second through HAProxy (TCP mode) to the same
    /// backend, 64 kept-alive connections: the peer proxy.
    pub haproxy_rps: Option<f64>,
    /// 99th-percentile latency of those, ms.
    pub haproxy_p99_ms: Option<f64>,
    /// Median time from a swap's acknowledgement to every node routing new
    /// connections to the new cluster, ms.
    pub swap_switch_ms_median: Option<f64>,
    /// The longest of those, ms.
    pub swap_switch_ms_max: Option<f64>,
    /// Bare `sh -c true` spawns per second on this machine with every core
    /// busy, measured in the same run as the transitions: their reference.
    pub spawn_per_s: Option<f64>,
    /// A step printing a large log: data dir growth per node over the bytes it printed.
    pub log_amplification: Option<f64>,
    /// The largest RSS of a node while that step ran, MiB.
    pub chatty_rss_mb: Option<f64>,
    /// Put p99 while that step ran over put p99 when idle.
    pub chatty_put_p99_ratio: Option<f64>,
}

/// Rounds to `digits` decimals, so the JSON reads like the table.
fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// `results.json`: `{"rows": [...], "figures": {...}}`, exactly the keys docs/BENCHMARKS.md lists.
pub fn to_json(rows: &[Row], f: &Figures) -> Value {
    let opt = |v: Option<f64>, d: i32| v.map(|v| json!(round(v, d))).unwrap_or(Value::Null);
    json!({
        "rows": rows.iter().map(|r| json!({
            "workload": r.workload,
            "clients": r.clients,
            "opsd_ops": round(r.opsd.ops_per_s, 1),
            "etcd_ops": round(r.etcd.ops_per_s, 1),
            "opsd_p50_ms": round(r.opsd.p50_ms, 3),
            "opsd_p99_ms": round(r.opsd.p99_ms, 3),
            "etcd_p50_ms": round(r.etcd.p50_ms, 3),
            "etcd_p99_ms": round(r.etcd.p99_ms, 3),
            "ratio": round(r.ratio(), 3),
        })).collect::<Vec<_>>(),
        "figures": {
            "transitions_per_s": opt(f.transitions_per_s, 1),
            "transition_p99_ms": opt(f.transition_p99_ms, 1),
            "failover_ms_median": opt(f.failover_ms_median, 0),
            "failover_ms_max": opt(f.failover_ms_max, 0),
            "join_catchup_ms": opt(f.join_catchup_ms, 0),
            "restart_serving_ms_100k": opt(f.restart_serving_ms_100k, 0),
            "rss_mb_100k": opt(f.rss_mb_100k, 1),
            "idle_rss_mb": opt(f.idle_rss_mb, 1),
            "lb_rps": opt(f.lb_rps, 1),
            "lb_p99_ms": opt(f.lb_p99_ms, 3),
            "direct_rps": opt(f.direct_rps, 1),
            "direct_p99_ms": opt(f.direct_p99_ms, 3),
            "lb_ratio": opt(f.lb_ratio, 3),
            "haproxy_rps": opt(f.haproxy_rps, 1),
            "haproxy_p99_ms": opt(f.haproxy_p99_ms, 3),
            "swap_switch_ms_median": opt(f.swap_switch_ms_median, 1),
            "swap_switch_ms_max": opt(f.swap_switch_ms_max, 1),
            "spawn_per_s": opt(f.spawn_per_s, 1),
            "log_amplification": opt(f.log_amplification, 3),
            "chatty_rss_mb": opt(f.chatty_rss_mb, 1),
            "chatty_put_p99_ratio": opt(f.chatty_put_p99_ratio, 3),
        }
    })
}

/// The comparison as a Markdown table (it reads as well in a terminal).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | clients | opsd ops/s | opsd p50 ms | opsd p99 ms | etcd ops/s | etcd p50 ms | etcd p99 ms | opsd/etcd |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            r.workload,
            r.clients,
            r.opsd.ops_per_s,
            r.opsd.p50_ms,
            r.opsd.p99_ms,
            r.etcd.ops_per_s,
            r.etcd.p50_ms,
            r.etcd.p99_ms,
            r.ratio()
        ));
    }
    out
}

/// The figures as a Markdown table; `not run` for parts that were skipped.
pub fn figures_table(f: &Figures) -> String {
    let show = |v: Option<f64>, unit: &str| match v {
        Some(v) if v >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.1} {unit}"),
        None => "not run".to_string(),
    };
    let rows = [
        ("no-op transitions, 100 concurrent", show(f.transitions_per_s, "/s")),
        ("transition p99 (Do to rest)", show(f.transition_p99_ms, "ms")),
        ("bare `sh -c true` spawns, every core busy", show(f.spawn_per_s, "/s")),
        ("leader failover, median of kills", show(f.failover_ms_median, "ms")),
        ("leader failover, max", show(f.failover_ms_max, "ms")),
        ("new node joins 100k keys, catch-up", show(f.join_catchup_ms, "ms")),
        (
            "restart to serving, 100k resources",
            show(f.restart_serving_ms_100k, "ms"),
        ),
        ("RSS, 100k resources", show(f.rss_mb_100k, "MiB")),
        ("RSS, fresh idle node", show(f.idle_rss_mb, "MiB")),
        ("HTTP through the load balancer, 64 connections", show(f.lb_rps, "/s")),
        ("HTTP through the load balancer, p99", show(f.lb_p99_ms, "ms")),
        ("HTTP straight to the backend, 64 connections", show(f.direct_rps, "/s")),
        ("HTTP straight to the backend, p99", show(f.direct_p99_ms, "ms")),
        (
            "load balancer / straight (requests/s)",
            f.lb_ratio.map_or("not run".to_string(), |r| format!("{r:.2}")),
        ),
        ("HTTP through HAProxy, 64 connections", show(f.haproxy_rps, "/s")),
        ("HTTP through HAProxy, p99", show(f.haproxy_p99_ms, "ms")),
        (
            "HAProxy / straight (requests/s)",
            match (f.haproxy_rps, f.direct_rps) {
                (Some(h), Some(d)) if d > 0.0 => format!("{:.2}", h / d),
                _ => "not run".to_string(),
            },
        ),
        (
            "swap to every node routing new connections, median",
            show(f.swap_switch_ms_median, "ms"),
        ),
        (
            "swap to every node routing new connections, max",
            show(f.swap_switch_ms_max, "ms"),
        ),
        (
            "chatty step: data dir growth / bytes printed, worst node",
            f.log_amplification.map_or("not run".to_string(), |r| format!("{r:.2}")),
        ),
        ("chatty step: RSS, worst node", show(f.chatty_rss_mb, "MiB")),
        (
            "chatty step: put p99 during / idle, 16 clients",
            f.chatty_put_p99_ratio
                .map_or("not run".to_string(), |r| format!("{r:.2}")),
        ),
    ];
    let mut out = String::from("| figure | value |\n| --- | ---: |\n");
    for (name, value) in rows {
        out.push_str(&format!("| {name} | {value} |\n"));
    }
    out
}

/// One target of the speed issue: what is measured, its value as shown,
/// the target as shown, and whether it was met (`None`: not run).
struct Target {
    figure: String,
    value: String,
    target: &'static str,
    met: Option<bool>,
}

/// Every target beside its measured value, one row each, with the verdict;
/// a part that was not run says so.
pub fn targets_table(rows: &[Row], f: &Figures) -> String {
    let row = |workload: &str, clients: usize| rows.iter().find(|r| r.workload == workload && r.clients == clients);
    let mut targets = Vec::new();
    let ratio_row = |workload: &str, clients: usize, min: f64, target: &'static str| {
        let r = row(workload, clients);
        Target {
            figure: format!("{workload}s/s opsd/etcd, {clients} clients (p99 opsd / etcd)"),
            value: r.map_or("not run".into(), |r| {
                format!("{:.2} ({:.2} / {:.2} ms)", r.ratio(), r.opsd.p99_ms, r.etcd.p99_ms)
            }),
            target,
            met: r.map(|r| r.ratio() >= min && r.opsd.p99_ms <= r.etcd.p99_ms),
        }
    };
    targets.push(ratio_row("get", 64, 1.5, ">= 1.5, p99 not above etcd's"));
    targets.push(ratio_row("get", 256, 1.5, ">= 1.5, p99 not above etcd's"));
    targets.push(ratio_row("put", 64, 1.3, ">= 1.3, p99 not above etcd's"));
    let puts: Vec<&Row> = rows.iter().filter(|r| r.workload == "put").collect();
    targets.push(Target {
        figure: "puts/s opsd/etcd, lowest over the client counts".into(),
        value: puts
            .iter()
            .min_by(|a, b| a.ratio().total_cmp(&b.ratio()))
            .map_or("not run".into(), |r| {
                format!("{:.2} ({} clients)", r.ratio(), r.clients)
            }),
        target: ">= 1.0",
        met: (!puts.is_empty()).then(|| puts.iter().all(|r| r.ratio() >= 1.0)),
    });
    let at_most = |figure: &str, v: Option<f64>, max: f64, unit: &str, target: &'static str| Target {
        figure: figure.into(),
        value: v.map_or("not run".into(), |v| match unit {
            "" => format!("{v:.2}"),
            unit => format!("{v:.0} {unit}"),
        }),
        target,
        met: v.map(|v| v <= max),
    };
    let spawn_ratio = f
        .transitions_per_s
        .zip(f.spawn_per_s)
        .map(|(t, s)| t / s.max(f64::MIN_POSITIVE));
    targets.push(Target {
        figure: "no-op transitions / bare spawns (transitions/s, spawns/s)".into(),
        value: spawn_ratio.map_or("not run".into(), |r| {
            format!(
                "{r:.2} ({:.0} / {:.0})",
                f.transitions_per_s.unwrap_or(0.0),
                f.spawn_per_s.unwrap_or(0.0)
            )
        }),
        target: ">= 0.5",
        met: spawn_ratio.map(|r| r >= 0.5),
    });
    targets.push(at_most("transition p99", f.transition_p99_ms, 60.0, "ms", "<= 60 ms"));
    targets.push(at_most(
        "leader failover, median",
        f.failover_ms_median,
        499.999,
        "ms",
        "< 500 ms",
    ));
    targets.push(at_most(
        "leader failover, max",
        f.failover_ms_max,
        999.999,
        "ms",
        "< 1000 ms",
    ));
    targets.push(at_most(
        "RSS, 100k resources",
        f.rss_mb_100k,
        299.999,
        "MiB",
        "< 300 MiB",
    ));
    targets.push(at_most(
        "restart to serving, 100k resources",
        f.restart_serving_ms_100k,
        999.999,
        "ms",
        "< 1000 ms",
    ));
    targets.push(at_most(
        "chatty step: data dir growth / log volume",
        f.log_amplification,
        1.5,
        "",
        "<= 1.5",
    ));
    targets.push(at_most("chatty step: RSS", f.chatty_rss_mb, 99.999, "MiB", "< 100 MiB"));
    targets.push(at_most(
        "chatty step: put p99 / idle put p99",
        f.chatty_put_p99_ratio,
        2.0,
        "",
        "<= 2",
    ));
    let mut out = String::from("| target | measured | target | met |\n| --- | ---: | ---: | --- |\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "not run",
        };
        out.push_str(&format!("| {} | {} | {} | {met} |\n", t.figure, t.value, t.target));
    }
    out
}

/// The output of a command, trimmed, or `unknown` if it cannot run.
fn command_output(program: &str, args: &[&str], dir: &Path) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine and versions, as lines for the report: cores, CPU, memory,
/// the disk holding the data dirs, opsd's commit and etcd's version.
pub fn machine(workspace: &Path, bench_dir: &Path, etcd_version: &str) -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let df = command_output("df", &["-hT", &bench_dir.display().to_string()], workspace);
    let disk = df
        .lines()
        .nth(1)
        .unwrap_or("unknown")
        .split_whitespace()
        .collect::<Vec<_>>();
    let disk = match disk.as_slice() {
        [dev, fs, size, ..] => {
            let name = dev.trim_start_matches("/dev/");
            let rotational = std::fs::read_to_string(format!("/sys/block/{name}/queue/rotational"))
                .map(|r| {
                    if r.trim() == "0" {
                        ", non-rotational"
                    } else {
                        ", rotational"
                    }
                })
                .unwrap_or("");
            format!("{dev} ({fs}, {size}{rotational})")
        }
        _ => "unknown".into(),
    };
    vec![
        format!("cores: {cores} ({cpu})"),
        format!("memory: {mem_gib:.1} GiB"),
        format!("disk of the data dirs: {disk}"),
        format!(
            "opsd: commit {} (release build)",
            command_output("git", &["describe", "--always", "--dirty"], workspace)
        ),
        format!("etcd: {etcd_version}"),
    ]
}
