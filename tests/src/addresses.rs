//! Addresses for test nodes that nothing else on the machine is using.
//!
//! Each node gets its own loopback address (`127.A.B.C`, drawn at random; all of
//! 127.0.0.0/8 is local on Linux) with the daemon's default ports, 7700 for
//! clients and 7701 for peers. That makes a test cluster look like a set of
//! machines, keeps its ports out of the kernel's ephemeral range (so an outgoing
//! connection can never take the port of a node that is down and about to
//! restart), and keeps clusters of concurrent test processes apart. Where only
//! 127.0.0.1 exists, it falls back to random ports below the ephemeral range.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

/// Addresses handed out by this process, never handed out twice.
static TAKEN: Mutex<Option<HashSet<SocketAddr>>> = Mutex::new(None);

/// A random number; good enough to spread addresses, not for anything secret.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A random `127.A.B.C` other than 127.0.0.1's /16.
fn random_loopback() -> Ipv4Addr {
    let r = random();
    Ipv4Addr::new(
        127,
        1 + (r % 254) as u8,
        ((r >> 8) % 256) as u8,
        1 + ((r >> 16) % 254) as u8,
    )
}

/// True if nothing listens on `addr` now (and it is a local address).
fn bindable(addr: SocketAddr) -> Result<(), std::io::Error> {
    TcpListener::bind(addr).map(drop)
}

/// Reserves `addrs` in this process if all are free on the machine.
fn reserve(addrs: &[SocketAddr]) -> bool {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    if addrs.iter().any(|a| taken.contains(a)) || addrs.iter().any(|a| bindable(*a).is_err()) {
        return false;
    }
    taken.extend(addrs.iter().copied());
    true
}

/// A client address and a peer address for a new node, both free now.
pub(crate) fn node_addresses() -> (SocketAddr, SocketAddr) {
    for _ in 0..64 {
        let ip = random_loopback();
        let client = SocketAddr::new(IpAddr::V4(ip), 7700);
        let peer = SocketAddr::new(IpAddr::V4(ip), 7701);
        if let Err(e) = bindable(client) {
            if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                // Only 127.0.0.1 is local here: use ports instead of addresses.
                return loopback_ports();
            }
            continue;
        }
        if reserve(&[client, peer]) {
            return (client, peer);
        }
    }
    panic!("could not find a free loopback address for a test node in 64 tries");
}

/// A loopback IP on which every one of `ports` is free now, reserved in this
/// process: for scripts that use the documented ports (7700, 7710, ...) and
/// only rewrite the host. A random `127.A.B.C`, or 127.0.0.1 where only that
/// is local; `None` if no such IP was found.
pub(crate) fn loopback_host(ports: &[u16]) -> Option<Ipv4Addr> {
    for _ in 0..64 {
        let mut ip = random_loopback();
        if let Err(e) = bindable(SocketAddr::new(IpAddr::V4(ip), ports[0])) {
            if e.kind() != std::io::ErrorKind::AddrNotAvailable {
                continue;
            }
            ip = Ipv4Addr::LOCALHOST;
        }
        let addrs: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::new(IpAddr::V4(ip), *p)).collect();
        if reserve(&addrs) {
            return Some(ip);
        }
        if ip == Ipv4Addr::LOCALHOST {
            return None;
        }
    }
    None
}

/// A free address that nothing listens on, for "nobody answers here" tests.
pub(crate) fn closed_address() -> SocketAddr {
    node_addresses().0
}

/// Two free ports on 127.0.0.1, between 20000 and 32000 (below the ephemeral range).
fn loopback_ports() -> (SocketAddr, SocketAddr) {
    for _ in 0..256 {
        let port = 20000 + (random() % 12000) as u16;
        let client = SocketAddr::from(([127, 0, 0, 1], port));
        let peer = SocketAddr::from(([127, 0, 0, 1], port + 1));
        if reserve(&[client, peer]) {
            return (client, peer);
        }
    }
    panic!("could not find two free ports on 127.0.0.1 for a test node in 256 tries");
}
