//! Process-group plumbing shared by the command runtime and the engine's
//! crash recovery.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Puts the child in its own process group and ties its life to this process.
pub(crate) fn isolate(command: &mut tokio::process::Command) {
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If the worker dies (even by SIGKILL), the attempt dies with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Sends SIGKILL to the process group led by `pgid` (ignores "no such group").
pub fn kill_process_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid targets a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Whether any process of the group led by `pgid` is still alive.
pub fn process_group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    pgid > 1 && unsafe { libc::kill(-pgid, 0) } == 0
}

/// Reads at most the last `max` bytes of a file; returns (bytes, truncated).
pub(crate) fn read_tail(path: &Path, max: usize) -> (Vec<u8>, bool) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), false);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let truncated = len > max as u64;
    if truncated && file.seek(SeekFrom::Start(len - max as u64)).is_err() {
        return (Vec::new(), false);
    }
    let mut bytes = Vec::new();
    let _ = file.take(max as u64).read_to_end(&mut bytes);
    (bytes, truncated)
}

/// This process's start time in clock ticks since boot (field 22 of
/// /proc/self/stat): with the pid it identifies a process across pid reuse.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The host name, for lease owners.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let pid = std::process::id();
        let first = process_start_ticks(pid);
        assert!(first.is_some());
        assert_eq!(first, process_start_ticks(pid));
    }

    #[test]
    fn read_tail_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_tail(&path, 4), (b"6789".to_vec(), true));
        assert_eq!(read_tail(&path, 100), (b"0123456789".to_vec(), false));
    }
}
