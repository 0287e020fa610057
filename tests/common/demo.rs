//! `shardgate demo` as a child process, and the free ports it needs.

use std::time::{Duration, Instant};

/// Where [`free_ports`] looks: below Linux's default ephemeral range (32768-60999),
/// from which every other test's servers and proxies take their free ports, so a
/// fixed range handed to the demo is not taken by a parallel test before the demo
/// binds it.
const FIXED_PORTS: std::ops::Range<u16> = 20000..32000;

/// `n` consecutive free ports on 127.0.0.1, outside the ephemeral range.
pub fn free_ports(n: u16) -> Vec<u16> {
    // Different processes (and calls) start at different places.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(
            CALLS
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(613),
        )
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    let span = u32::from(FIXED_PORTS.end - FIXED_PORTS.start - n);
    for attempt in 0..200u32 {
        let offset = (seed.wrapping_add(attempt.wrapping_mul(104_729))) % span;
        let first = FIXED_PORTS.start + u16::try_from(offset).unwrap_or(0);
        let ports: Vec<u16> = (first..first + n).collect();
        if ports
            .iter()
            .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return ports;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1 in {FIXED_PORTS:?}");
}

/// The demo child process; SIGTERM on drop, so its servers are stopped and removed
/// even when an assertion fails.
pub struct DemoProcess {
    /// The `shardgate demo` process.
    pub child: std::process::Child,
    /// The file its stdout and stderr go to.
    pub log_path: std::path::PathBuf,
}

impl DemoProcess {
    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (up to 180 s) until the demo prints its banner; panics with its log if it
    /// exits or takes longer.
    pub fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !self.log().contains("shardgate demo is running") {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the demo exited ({status}) before serving:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the demo is not serving after 180 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, then wait up to a minute for the demo to stop its servers.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                _ => {
                    let _ = self.child.kill();
                    return self.child.wait().expect("wait for the demo");
                }
            }
        }
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}
