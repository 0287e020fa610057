//! `--syscalls`: system calls and context switches of the relay and of shardgate over
//! exactly one measured phase, counted by `perf stat` attached to the running process.
//!
//! perf starts with its events disabled (`--delay -1`) and is driven through two FIFOs
//! (`--control fifo:CTL,ACK`): `enable` when the phase starts, `disable` when its last
//! query has been answered, each acknowledged by perf before the bench goes on, so the
//! counts cover the measured window and nothing else (perf's attach time included).
//! Then perf gets SIGINT and writes its counts (`-x ,`) to a file, which is parsed here.
//! Tracepoints cost the traced process a little per system call: QPS and CPU taken
//! with `--syscalls` are not the figures to quote.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The events counted, in the order of [`Counts::values`].
const EVENTS: [&str; 9] = [
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_futex",
    "raw_syscalls:sys_enter",
    "context-switches",
];

/// `O_NONBLOCK` on Linux (x86_64 and aarch64).
const O_NONBLOCK: i32 = 0o4000;
/// Longest wait for perf to acknowledge a command or to exit.
const PERF_WAIT: Duration = Duration::from_secs(15);

/// What one process did over one measured phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub sendto: u64,
    pub recvfrom: u64,
    pub write: u64,
    pub writev: u64,
    pub read: u64,
    pub epoll_wait: u64,
    pub futex: u64,
    /// Every system call (`raw_syscalls:sys_enter`).
    pub all: u64,
    pub context_switches: u64,
}

impl Counts {
    fn slot(&mut self, event: &str) -> Option<&mut u64> {
        Some(match event {
            "syscalls:sys_enter_sendto" => &mut self.sendto,
            "syscalls:sys_enter_recvfrom" => &mut self.recvfrom,
            "syscalls:sys_enter_write" => &mut self.write,
            "syscalls:sys_enter_writev" => &mut self.writev,
            "syscalls:sys_enter_read" => &mut self.read,
            "syscalls:sys_enter_epoll_wait" => &mut self.epoll_wait,
            "syscalls:sys_enter_futex" => &mut self.futex,
            "raw_syscalls:sys_enter" => &mut self.all,
            "context-switches" => &mut self.context_switches,
            _ => return None,
        })
    }

    /// System calls other than the seven named ones.
    pub fn other(&self) -> u64 {
        let named = self.sendto
            + self.recvfrom
            + self.write
            + self.writev
            + self.read
            + self.epoll_wait
            + self.futex;
        self.all.saturating_sub(named)
    }

    /// The table's columns in order: sendto, recvfrom, write, writev, read,
    /// epoll_wait, futex, other, all, context switches.
    pub fn values(&self) -> [u64; 10] {
        [
            self.sendto,
            self.recvfrom,
            self.write,
            self.writev,
            self.read,
            self.epoll_wait,
            self.futex,
            self.other(),
            self.all,
            self.context_switches,
        ]
    }
}

pub const HEADER: &str = "| workload | conns | arm | sendto | recvfrom | write | writev | read | epoll_wait | futex | other | all syscalls | context switches |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";

/// Parses `perf stat -x ,` output. `<not counted>` (the process made no such call in
/// the window) is 0; an event that is missing or `<not supported>` makes the whole
/// reading `None`, since "other" would be wrong.
pub fn parse(text: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = 0usize;
    for line in text.lines() {
        let mut fields = line.split(',');
        let (Some(value), Some(_unit), Some(event)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(slot) = counts.slot(event.trim()) else {
            continue;
        };
        *slot = match value.trim() {
            "<not counted>" => 0,
            v => v.parse().ok()?,
        };
        seen += 1;
    }
    (seen == EVENTS.len()).then_some(counts)
}

/// Whether `perf` can be run at all.
pub fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `perf stat` attached to one process, its events disabled until [`Self::enable`].
pub struct PerfStat {
    child: Option<Child>,
    ctl: File,
    ack: File,
    out: PathBuf,
    fifos: [PathBuf; 2],
}

impl PerfStat {
    /// Starts perf on `pid`, its FIFOs and output in `dir` (named after `tag`).
    pub fn start(pid: u32, dir: &Path, tag: &str) -> Result<PerfStat, String> {
        let ctl_path = dir.join(format!("perf-{tag}.ctl"));
        let ack_path = dir.join(format!("perf-{tag}.ack"));
        let out = dir.join(format!("perf-{tag}.csv"));
        for p in [&ctl_path, &ack_path, &out] {
            let _ = std::fs::remove_file(p);
        }
        for p in [&ctl_path, &ack_path] {
            let ok = Command::new("mkfifo")
                .arg(p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("mkfifo {} failed", p.display()));
            }
        }
        // Opened before perf starts: read-write never blocks on a FIFO, and perf's
        // blocking open of the ACK FIFO for writing finds its reader.
        let open = |p: &Path, flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(flags == 0)
                .custom_flags(flags)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        let ctl = open(&ctl_path, 0)?;
        let ack = open(&ack_path, O_NONBLOCK)?;
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "--delay", "-1", "-o"])
            .arg(&out)
            .arg("--control")
            .arg(format!(
                "fifo:{},{}",
                ctl_path.display(),
                ack_path.display()
            ))
            .args(["-e", &EVENTS.join(","), "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start perf: {e}"))?;
        Ok(PerfStat {
            child: Some(child),
            ctl,
            ack,
            out,
            fifos: [ctl_path, ack_path],
        })
    }

    /// Starts counting; returns once perf has acknowledged it.
    pub fn enable(&mut self) -> Result<(), String> {
        self.command("enable")
    }

    /// Stops counting, stops perf and returns what it counted.
    pub fn finish(mut self) -> Result<Counts, String> {
        self.command("disable")?;
        let mut child = self.child.take().ok_or("perf already stopped")?;
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + PERF_WAIT;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("perf did not exit after SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&self.out).map_err(|e| e.to_string())?;
        parse(&text).ok_or_else(|| format!("unreadable perf output:\n{text}"))
    }

    /// Sends one control command and waits for perf's `ack`.
    fn command(&mut self, cmd: &str) -> Result<(), String> {
        self.ctl
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("perf control: {e}"))?;
        let deadline = Instant::now() + PERF_WAIT;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match self.ack.read(&mut buf) {
                Ok(n) if n > 0 => {
                    got.extend_from_slice(&buf[..n]);
                    // perf writes "ack\n" with its C string's NUL.
                    if got.windows(4).any(|w| w == b"ack\n") {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("perf ack: {e}")),
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&self.out).unwrap_or_default();
                    return Err(format!("perf exited ({status}) before `{cmd}`: {text}"));
                }
            }
            if Instant::now() > deadline || got.len() > 4096 {
                return Err(format!("perf did not acknowledge `{cmd}`"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for PerfStat {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for p in self.fifos.iter().chain([&self.out]) {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_csv_with_not_counted_events() {
        let text = "# started on Wed Dec  2 16:20:11 2026\n\n\
            120,,syscalls:sys_enter_sendto,355751928,100.00,,\n\
            118,,syscalls:sys_enter_recvfrom,355751928,100.00,,\n\
            <not counted>,,syscalls:sys_enter_write,0,100.00,,\n\
            3,,syscalls:sys_enter_writev,355751928,100.00,,\n\
            <not counted>,,syscalls:sys_enter_read,0,100.00,,\n\
            40,,syscalls:sys_enter_epoll_wait,355751928,100.00,,\n\
            9,,syscalls:sys_enter_futex,355751928,100.00,,\n\
            300,,raw_syscalls:sys_enter,355751928,100.00,,\n\
            77,,context-switches,355751928,100.00,,\n";
        let c = parse(text).expect("parsed");
        assert_eq!(c.sendto, 120);
        assert_eq!(c.write, 0);
        assert_eq!(c.other(), 300 - 120 - 118 - 3 - 40 - 9);
        assert_eq!(c.context_switches, 77);
        assert!(parse("<not supported>,,raw_syscalls:sys_enter,0,0,,\n").is_none());
    }
}
