//! Ports for the processes tests start. Probing port 0 and handing its number to a broker
//! races with everything else the kernel binds on its own: another broker's admin listener on
//! port 0, a client's outgoing connection. So the harness hands out ports below the kernel's
//! ephemeral range, each at most once per test process.

use std::net::{SocketAddr, TcpListener};

/// Where the harness hands out ports: below the kernel's ephemeral range (32768 and up by
/// default), so no port the kernel picks on its own (an admin listener on port 0, a client's
/// outgoing connection) can take a node's port between the probe and the node's bind.
const HARNESS_PORTS: std::ops::Range<u16> = 12_000..32_000;

/// `count` consecutive ports nothing listens on now, from [`HARNESS_PORTS`], never handed out
/// twice by this process (a cursor walks the range from a place that depends on the process
/// id, so two test processes at once start far apart; the bind probe skips what another holds).
pub fn free_ports(count: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(HARNESS_PORTS.end - HARNESS_PORTS.start - count);
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let step = CURSOR.fetch_add(u32::from(count), Ordering::SeqCst) % span;
        let base = HARNESS_PORTS.start + step as u16;
        if (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return base;
        }
    }
    panic!("no {count} free ports in {HARNESS_PORTS:?}");
}

/// One port nothing listens on now (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)
}

/// A loopback address on a [`free_port`].
pub fn free_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
