//! Signals to the MariaDB processes the demo and the tests start: stop, resume, kill,
//! and waiting until a stopped server really is stopped.

use std::io;
use std::process::Child;
use std::time::{Duration, Instant};

use super::localdb::STOP_TIMEOUT;

pub(super) const SIGKILL: i32 = 9;
pub(super) const SIGTERM: i32 = 15;
pub(super) const SIGCONT: i32 = 18;
pub(super) const SIGSTOP: i32 = 19;

extern "C" {
    // libc's kill(2); std links libc on Linux, and the crate has no libc dependency.
    fn kill(pid: i32, sig: i32) -> i32;
}

pub(super) fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours. Callers pass
    // their own unreaped child, or a pid whose command line they have just checked.
    let rc = unsafe { kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SIGTERM (after SIGCONT, in case it was paused), wait, and SIGKILL if it lingers.
pub(super) fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = send_signal(child.id(), SIGCONT);
    if send_signal(child.id(), SIGTERM).is_ok() {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
    }
    let _ = send_signal(child.id(), SIGKILL);
    let _ = child.wait();
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc`); false when
/// that cannot be read.
pub(super) fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                let after = stat.rsplit_once(')')?.1;
                after
                    .split_whitespace()
                    .next()
                    .map(|s| s == "T" || s == "t")
            })
            .unwrap_or(false)
    })
}
