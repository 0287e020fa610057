//! `shardgate demo` as a child process, and the free ports it needs.

use std::time::{Duration, Instant};

/// `n` consecutive free ports on 127.0.0.1.
pub fn free_ports(n: u16) -> Vec<u16> {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let ports: Vec<u16> = (0..n).filter_map(|i| first.checked_add(i)).collect();
        if ports.len() == usize::from(n)
            && ports
                .iter()
                .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return ports;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1");
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
