//! Loopback ports for end-to-end tests that start real peers (tests run in parallel,
//! and a peer often opens ports next to its own).

use std::net::UdpSocket;
use std::sync::Mutex;

/// A loopback port on `host` that this process never handed out before, nor within
/// `spread` of one it handed out, and for which `free(port)` holds: the caller binds
/// there what its peers will open (TCP on the port, a port or two above it). The port
/// is chosen by the kernel as an ephemeral UDP port, held while `free` runs.
///
/// # Panics
/// When 200 tries found no such port.
pub fn free_port_with(host: &str, spread: u16, free: impl Fn(u16) -> bool) -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..200 {
        let udp = UdpSocket::bind((host, 0)).expect("bind an ephemeral UDP port");
        let port = udp.local_addr().expect("a bound socket's address").port();
        if port.checked_add(spread).is_none() || !free(port) {
            continue;
        }
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.iter().any(|&g| g.abs_diff(port) <= spread) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port found");
}

#[cfg(test)]
mod tests {
    use super::free_port_with;
    use std::net::TcpListener;

    #[test]
    fn ports_handed_out_are_apart_and_pass_the_check() {
        let ports: Vec<u16> = (0..20)
            .map(|_| {
                free_port_with("127.0.0.1", 2, |p| {
                    TcpListener::bind(("127.0.0.1", p)).is_ok() && p % 2 == 0
                })
            })
            .collect();
        for (i, a) in ports.iter().enumerate() {
            assert_eq!(a % 2, 0, "the check was applied");
            for b in &ports[i + 1..] {
                assert!(a.abs_diff(*b) > 2, "{a} and {b} are too close");
            }
        }
    }
}
