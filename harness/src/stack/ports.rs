//! Loopback ports for the servers a test starts, that nobody else can take before the server binds.
//!
//! Asking the kernel for port 0 and releasing it (what `free_port` helpers do) leaves two races:
//!
//! * **Another test process** asks at the same moment and is told the same free port; whichever
//!   server binds second fails to start (a JVM takes seconds to get there). With a process per test
//!   (cargo-nextest), several stacks start at once.
//! * **An outgoing connection** takes the port as its source port: port 0 hands out ports of the
//!   ephemeral range (`ip_local_port_range`, 32768-60999 on Linux), the range every `connect()` also
//!   draws from, and a readiness check alone opens a connection every 100 ms.
//!
//! So ports come from below the ephemeral range, and each is claimed with an exclusive `flock` on a
//! file named after it, held for the rest of this process: the kernel drops the lock when the process
//! dies, however it dies, so a crashed run leaves no claim behind. A claimed port is also checked to
//! be free (a server of the machine may listen there).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

use rand::Rng;

use super::error::{Result, StackError};

/// Below Linux's default ephemeral range (32768-60999) and above the well-known ports.
const RANGE: std::ops::Range<u16> = 20_000..32_768;

/// Claims held by this process: the locks last as long as the files stay open.
static CLAIMS: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// `n` distinct loopback ports, claimed for this process until it exits.
pub fn reserve(n: usize) -> Result<Vec<u16>> {
    let mut ports = Vec::with_capacity(n);
    let mut rng = rand::rng();
    // Each try is a random port of 12,768: a few hundred tries find a free one unless the range is
    // nearly all claimed, which is an error worth reporting rather than a loop.
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        if tries > 2_000 {
            return Err(StackError::Setup(format!(
                "no free loopback port in {RANGE:?} after 2,000 tries (claims in {})",
                claims_dir().display()
            )));
        }
        let port = rng.random_range(RANGE);
        if !ports.contains(&port) && claim(port)? {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// One claimed port.
pub fn reserve_one() -> Result<u16> {
    Ok(reserve(1)?[0])
}

/// `127.0.0.1:<a claimed port>`.
pub fn reserve_address() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], reserve_one()?)))
}

/// Takes `port` for this process if no other process holds it and nothing listens on it.
fn claim(port: u16) -> Result<bool> {
    let dir = claims_dir();
    std::fs::create_dir_all(&dir)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))?;
    // SAFETY: flock on a descriptor this function owns; LOCK_NB makes it return at once.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked || TcpListener::bind(("127.0.0.1", port)).is_err() {
        return Ok(false);
    }
    CLAIMS
        .lock()
        .map_err(|_| StackError::Setup("the port claims' lock is poisoned".into()))?
        .push(file);
    Ok(true)
}

fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("orders-cache-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_below_the_ephemeral_range_and_free() {
        let ports = reserve(20).expect("ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 20);
        for port in ports {
            assert!(RANGE.contains(&port));
            TcpListener::bind(("127.0.0.1", port)).expect("a reserved port is free to bind");
        }
    }

    #[test]
    fn a_port_claimed_here_is_not_claimed_again() {
        let port = reserve_one().expect("a port");
        assert!(!claim(port).expect("a claim attempt"), "the claim is held");
    }
}
