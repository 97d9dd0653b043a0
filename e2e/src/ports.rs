//! Ports for processes the tests start. Only std: the sidecar's integration tests include this
//! file by path (`sidecar/tests/support/issuer.rs`), so that both pick ports the same way.

/// A loopback port free at the time of the call, for a process the test starts to bind.
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A port of `host` free at the time of the call, for a process the test starts to bind. It
/// comes from outside the kernel's ephemeral range: a port from inside it, once released, may
/// go to any socket's `bind(0)` or `connect()` (the tests make many) before the process binds
/// it. Each call of one test binary tries the next port from a start its pid picks.
pub fn free_port_on(host: std::net::Ipv4Addr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u32>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        });
    let (low, high) = range.unwrap_or((32_768, 60_999));
    // The larger gap: below the range (from 10000) or above it.
    let (first, span) = if low.saturating_sub(10_000) >= 65_535 - high {
        (10_000, low - 10_000)
    } else {
        (high + 1, 65_535 - high)
    };
    let start = std::process::id().wrapping_mul(7_919);
    (0..span)
        .map(|_| first + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span)
        .filter_map(|port| u16::try_from(port).ok())
        .find(|&port| std::net::TcpListener::bind((host, port)).is_ok())
        .expect("a free port outside the ephemeral range")
}
