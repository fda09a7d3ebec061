//! Worker identity for leases: `host:pid:start-ticks`.
//!
//! The process start time makes the id unique across pid reuse, so a worker
//! on the same host can tell for certain that a lease's owner is dead and
//! reclaim its block at once instead of waiting for the lease to expire.

use factory_runtime::process::{hostname, process_start_ticks};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    pub start_ticks: u64,
}

impl Owner {
    pub fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            host: hostname(),
            pid,
            start_ticks: process_start_ticks(pid).unwrap_or(0),
        }
    }

    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.host, self.pid, self.start_ticks)
    }

    pub fn parse(id: &str) -> Option<Owner> {
        let mut parts = id.rsplitn(3, ':');
        let start_ticks = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_string();
        Some(Owner {
            host,
            pid,
            start_ticks,
        })
    }

    /// True only when `self` is on this host and provably no longer running.
    pub fn is_dead_local(&self) -> bool {
        self.host == hostname() && process_start_ticks(self.pid) != Some(self.start_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_knows_it_is_alive() {
        let me = Owner::current();
        let parsed = Owner::parse(&me.id()).unwrap();
        assert_eq!(parsed, me);
        assert!(!parsed.is_dead_local());
    }

    #[test]
    fn a_vanished_local_process_is_dead() {
        let ghost = Owner {
            start_ticks: 1,
            ..Owner::current()
        };
        assert!(ghost.is_dead_local());
        let remote = Owner {
            host: "some-other-host".into(),
            start_ticks: 1,
            ..Owner::current()
        };
        assert!(!remote.is_dead_local());
    }
}
