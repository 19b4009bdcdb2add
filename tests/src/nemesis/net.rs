//! Real network partitions between real processes: each node runs in its own
//! network namespace, attached by a veth pair to a bridge of its own run.
//! The bridge lives in a namespace of its own too (the hub), so the host's
//! firewall (Docker sets the forward policy to DROP, and bridged traffic
//! goes through it) never sees the nodes' traffic and is never touched.
//! A partition is a set of iptables DROP rules inside the namespaces of the
//! nodes that are cut (both directions, so TCP connections hang the way they
//! do when a switch fails, rather than being refused); an isolated node can
//! also have its link taken down. The harness itself talks to every node from
//! the hub's address, which no rule drops: a client on the wrong side of
//! a partition still reaches its node, and sees what a real client would.
//!
//! This needs root (CAP_NET_ADMIN), `ip` (iproute2) and `iptables`.
//! [`Network::probe`] says whether the machine can, and why not.
//!
//! Names: a run draws a free subnet `10.231.X.0/24`. Its hub is the
//! namespace `onmX` holding the bridge `br0`; the harness reaches it through
//! the veth `onmX` (address `10.231.X.1`, the owning process in the link's
//! alias, so a crashed run's leftovers are recognised and removed by the
//! next run). The node named `nK` lives in the namespace `onmXnK` with
//! address `10.231.X.(10+K)` on its `eth0`. Two runs never share a subnet.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::NodeConfig;

/// The /16 that every run's /24 is drawn from.
const NET_PREFIX: [u8; 2] = [10, 231];

/// What the alias of the harness's veth into a hub starts with, followed by the owner's pid.
const ALIAS: &str = "opsd-nemesis pid ";

/// Runs a command and returns its stdout, or an error naming the command and
/// what it wrote on stderr.
pub(crate) fn run(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if let Some(input) = input {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| format!("`{}`: writing its input: {e}", args.join(" ")))?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{}`: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True if this process runs as root (effective uid 0), read from /proc so no
/// extra system-call bindings are needed.
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// One node's place on the network.
#[derive(Clone, Debug)]
struct Slot {
    ns: String,
    ip: Ipv4Addr,
}

/// The namespaces, veths and bridge of one run. Dropping it removes them all
/// (the processes inside must be gone first: drop the cluster before it).
pub struct Network {
    subnet: u8,
    hub: String,
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl Network {
    /// Whether this machine can run nodes in network namespaces: root, `ip`
    /// and `iptables` present, and a namespace can be made and removed.
    /// `Err` says what is missing, for the skip message.
    pub fn probe() -> Result<(), String> {
        if !is_root() {
            return Err("network namespaces need root (CAP_NET_ADMIN) and this process is not root".into());
        }
        run(&["ip", "-V"], None).map_err(|e| format!("iproute2 is missing (`make nemesis` installs it): {e}"))?;
        run(&["iptables", "--version"], None)
            .map_err(|e| format!("iptables is missing (`make nemesis` installs it): {e}"))?;
        run(&["iptables-restore", "--version"], None)
            .map_err(|e| format!("iptables-restore is missing (`make nemesis` installs it): {e}"))?;
        let probe = format!("onmprobe{}", std::process::id());
        run(&["ip", "netns", "add", &probe], None).map_err(|e| format!("cannot make a network namespace: {e}"))?;
        let filter = run(&["ip", "netns", "exec", &probe, "iptables", "-S"], None);
        let _ = run(&["ip", "netns", "del", &probe], None);
        filter.map_err(|e| format!("iptables does not work inside a network namespace: {e}"))?;
        Ok(())
    }

    /// Makes a hub with a bridge on a free subnet for a new run, after
    /// removing what crashed runs left behind.
    pub fn create() -> Result<Network, String> {
        remove_leftovers();
        let used = run(&["ip", "-4", "-o", "addr", "show"], None)?;
        let mut tried = Vec::new();
        let start = (std::process::id() % 250) as u8;
        for k in 0..250u8 {
            let subnet = 1 + (start.wrapping_add(k) % 250);
            let prefix = format!("{}.{}.{subnet}.", NET_PREFIX[0], NET_PREFIX[1]);
            if used.contains(&prefix) {
                continue;
            }
            let hub = format!("onm{subnet}");
            // Making the hub is the lock on the subnet: it fails if another run holds it.
            if let Err(e) = run(&["ip", "netns", "add", &hub], None) {
                tried.push(e);
                continue;
            }
            let net = Network {
                subnet,
                hub: hub.clone(),
                slots: Mutex::new(BTreeMap::new()),
            };
            let alias = format!("{ALIAS}{}", std::process::id());
            let host = format!("{prefix}1/24");
            let steps: [&[&str]; 9] = [
                &["ip", "-n", &hub, "link", "set", "dev", "lo", "up"],
                &["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"],
                &["ip", "-n", &hub, "link", "set", "dev", "br0", "up"],
                &[
                    "ip", "link", "add", &hub, "type", "veth", "peer", "name", "host", "netns", &hub,
                ],
                &["ip", "link", "set", "dev", &hub, "alias", &alias],
                &["ip", "-n", &hub, "link", "set", "dev", "host", "master", "br0", "up"],
                &["ip", "addr", "add", &host, "dev", &hub],
                &["ip", "link", "set", "dev", &hub, "up"],
                &["ip", "-n", &hub, "link", "show", "dev", "br0"],
            ];
            for step in steps {
                run(step, None)?;
            }
            return Ok(net);
        }
        Err(format!(
            "no free subnet under {}.{}.0.0/16 for a nemesis bridge; last errors: {:?}",
            NET_PREFIX[0],
            NET_PREFIX[1],
            tried.iter().rev().take(3).collect::<Vec<_>>()
        ))
    }

    /// The hub's name (its namespace, and the harness's veth into it), for messages.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Puts the node `config` describes into a namespace of its own (made
    /// now, or reused if this name has one): its addresses become the
    /// namespace's address with the daemon's default ports, and it is started
    /// under `ip netns exec`. Panics if the namespace cannot be made: a
    /// broken network setup is not a fault of the cluster.
    pub fn place(&self, config: &mut NodeConfig) {
        let slot = self
            .slot(&config.name)
            .unwrap_or_else(|e| panic!("placing {} in a network namespace: {e}", config.name));
        config.listen = SocketAddr::from((slot.ip, 7700));
        config.peer_listen = SocketAddr::from((slot.ip, 7701));
        config.command_prefix = vec!["ip".into(), "netns".into(), "exec".into(), slot.ns.clone()];
    }

    fn slot(&self, name: &str) -> Result<Slot, String> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(name) {
            return Ok(s.clone());
        }
        let host_part = 11 + slots.len();
        if host_part > 250 {
            return Err(format!("the subnet of hub {} is full", self.hub));
        }
        let ip = Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.subnet, host_part as u8);
        let slot = Slot {
            ns: format!("onm{}{name}", self.subnet),
            ip,
        };
        let addr = format!("{ip}/24");
        run(&["ip", "netns", "add", &slot.ns], None)?;
        slots.insert(name.to_string(), slot.clone());
        let hub = self.hub.as_str();
        let steps: [&[&str]; 6] = [
            &[
                "ip", "-n", hub, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &slot.ns,
            ],
            &["ip", "-n", hub, "link", "set", "dev", name, "master", "br0", "up"],
            &["ip", "-n", &slot.ns, "addr", "add", &addr, "dev", "eth0"],
            &["ip", "-n", &slot.ns, "link", "set", "dev", "eth0", "up"],
            &["ip", "-n", &slot.ns, "link", "set", "dev", "lo", "up"],
            &["ip", "netns", "exec", &slot.ns, "iptables", "-S"],
        ];
        for step in steps {
            run(step, None)?;
        }
        Ok(slot)
    }

    /// The address of the node named `name`, if it was placed.
    pub fn ip_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|s| s.ip)
    }

    /// Cuts the network between the groups of nodes (by name): no packet
    /// passes between two nodes of different groups, in either direction.
    /// Replaces any partition in force; nodes in no group are not cut.
    pub fn partition(&self, groups: &[Vec<String>]) -> Result<(), String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (g, group) in groups.iter().enumerate() {
            let others: Vec<Ipv4Addr> = groups
                .iter()
                .enumerate()
                .filter(|(h, _)| *h != g)
                .flat_map(|(_, other)| other.iter())
                .filter_map(|n| slots.get(n).map(|s| s.ip))
                .collect();
            for name in group {
                let slot = slots
                    .get(name)
                    .ok_or_else(|| format!("partition: node {name} has no namespace"))?;
                let mut rules =
                    String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
                for ip in &others {
                    rules.push_str(&format!("-A INPUT -s {ip}/32 -j DROP\n-A OUTPUT -d {ip}/32 -j DROP\n"));
                }
                rules.push_str("COMMIT\n");
                run(&["ip", "netns", "exec", &slot.ns, "iptables-restore"], Some(&rules))
                    .map_err(|e| format!("cutting {name} off: {e}"))?;
            }
        }
        Ok(())
    }

    /// Takes the link of node `name` down (`up == false`: nobody reaches it,
    /// not even clients) or brings it back up.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let slot = slots
            .get(name)
            .ok_or_else(|| format!("link of node {name}: it has no namespace"))?;
        run(
            &[
                "ip",
                "-n",
                &slot.ns,
                "link",
                "set",
                "dev",
                "eth0",
                if up { "up" } else { "down" },
            ],
            None,
        )
        .map(drop)
    }

    /// Ends every partition: flushes the rules of every namespace and brings
    /// every link up. Tries them all and reports the first failure.
    pub fn heal(&self) -> Result<(), String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut first_error = None;
        for (name, slot) in &slots {
            let flush = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
            let results = [
                run(&["ip", "netns", "exec", &slot.ns, "iptables-restore"], Some(flush)).map(drop),
                run(&["ip", "-n", &slot.ns, "link", "set", "dev", "eth0", "up"], None).map(drop),
            ];
            for r in results {
                if let Err(e) = r {
                    first_error.get_or_insert(format!("healing {name}: {e}"));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()));
        for slot in slots.values() {
            let _ = run(&["ip", "netns", "del", &slot.ns], None);
        }
        // Deleting the hub deletes its veths, the harness's end included.
        let _ = run(&["ip", "netns", "del", &self.hub], None);
        let _ = run(&["ip", "link", "del", "dev", &self.hub], None);
    }
}

/// Removes the hubs, veths and namespaces of runs whose process is gone
/// (killed before it could clean up), recognised by the alias of the
/// harness's veth into the hub.
fn remove_leftovers() {
    let Ok(links) = run(&["ip", "-o", "link", "show", "type", "veth"], None) else {
        return;
    };
    for line in links.lines() {
        let Some(name) = line
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        else {
            continue;
        };
        let Some(subnet) = name.strip_prefix("onm").and_then(|s| s.parse::<u8>().ok()) else {
            continue;
        };
        let alias = std::fs::read_to_string(format!("/sys/class/net/{name}/ifalias")).unwrap_or_default();
        let Some(pid) = alias.trim().strip_prefix(ALIAS).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("[nemesis] removing the network of a finished run (hub {name}, pid {pid} is gone)");
        let nodes = format!("onm{subnet}n");
        if let Ok(list) = run(&["ip", "netns", "list"], None) {
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if ns.starts_with(&nodes) {
                    let _ = run(&["ip", "netns", "del", ns], None);
                }
            }
        }
        let _ = run(&["ip", "netns", "del", &name], None);
        let _ = run(&["ip", "link", "del", "dev", &name], None);
    }
}
