//! The MariaDB programs, the data-directory template every local server copies, and
//! the temp directories servers live in.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::super::process::{send_signal, SIGCONT, SIGKILL};
use super::client::mariadb_command;

/// InnoDB redo log size; the template and every server must agree.
pub(super) const LOG_FILE_SIZE: &str = "8M";
/// Hint shown when MariaDB is missing.
const INSTALL_HINT: &str =
    "install it with `apt-get install mariadb-server mariadb-client` (or run scripts/ensure-deps)";

/// Where the MariaDB server binary is, or why it cannot be found.
pub fn find_mariadbd() -> Result<PathBuf, String> {
    find_binary(&["mariadbd", "mysqld"]).ok_or_else(|| {
        format!("MariaDB server (`mariadbd`) not found in PATH or /usr/sbin; {INSTALL_HINT}")
    })
}

/// The MariaDB programs a server needs.
#[derive(Debug)]
pub(super) struct Binaries {
    pub(super) server: PathBuf,
    pub(super) install_db: PathBuf,
    pub(super) client: PathBuf,
}

pub(super) fn binaries() -> Result<&'static Binaries, String> {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINARIES
        .get_or_init(|| {
            let server = find_mariadbd()?;
            let install_db = find_binary(&["mariadb-install-db", "mysql_install_db"])
                .ok_or_else(|| format!("`mariadb-install-db` not found; {INSTALL_HINT}"))?;
            let client = find_binary(&["mariadb", "mysql"])
                .ok_or_else(|| format!("MariaDB client (`mariadb`) not found; {INSTALL_HINT}"))?;
            Ok(Binaries {
                server,
                install_db,
                client,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|dir| dir.join(name))
            .find(|path| is_executable(path))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The effective user id: /proc/self belongs to it.
pub(super) fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok()
}

pub(super) fn running_as_root() -> bool {
    effective_uid() == Some(0)
}

/// Base directory for servers and the template. Unix socket paths are limited to
/// 107 bytes, so a long `TMPDIR` falls back to /tmp.
pub(super) fn base_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if tmp.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        tmp
    }
}

/// The initialized, never-started data directory every server copies.
///
/// Built once per machine and MariaDB build: into a private directory first, then
/// renamed into place, which is atomic, so concurrent test binaries never see a half
/// made template; the loser of a race discards its copy. The process caches the path.
pub(super) fn template(binaries: &Binaries) -> Result<&'static Path, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    if let Some(done) = TEMPLATE.get() {
        return done.as_deref().map_err(Clone::clone);
    }
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    TEMPLATE
        .get_or_init(|| build_template(binaries))
        .as_deref()
        .map_err(Clone::clone)
}

fn build_template(binaries: &Binaries) -> Result<PathBuf, String> {
    let key = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&binaries.server)
            .map_err(|e| format!("{}: {e}", binaries.server.display()))?;
        // Changes with the MariaDB build and with the options baked into the template.
        format!(
            "{:x}-{:x}-{LOG_FILE_SIZE}-u{}",
            meta.size(),
            meta.mtime(),
            effective_uid().unwrap_or(u32::MAX)
        )
    };
    let target = base_dir().join(format!("shardgate-mariadb-template-{key}"));
    if target.join("mysql").is_dir() {
        return Ok(target);
    }
    let scratch = unique_dir("sgtpl")?;
    let data = scratch.join("data");
    let mut cmd = mariadb_command(&binaries.install_db, &scratch);
    cmd.arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .arg(format!("--innodb-log-file-size={LOG_FILE_SIZE}"))
        .arg("--innodb-buffer-pool-size=32M")
        .arg("--skip-log-bin");
    if running_as_root() {
        cmd.arg("--user=root");
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", binaries.install_db.display()));
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
    };
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(format!(
            "{} failed ({}):\n{}{}",
            binaries.install_db.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let renamed = std::fs::rename(&data, &target);
    let _ = std::fs::remove_dir_all(&scratch);
    match renamed {
        Ok(()) => Ok(target),
        // Another process won the race; its template is as good as ours.
        Err(_) if target.join("mysql").is_dir() => Ok(target),
        Err(e) => Err(format!("creating {}: {e}", target.display())),
    }
}

/// A new, empty directory with a short unique name under [`base_dir`].
pub(super) fn unique_dir(prefix: &str) -> Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base_dir().join(format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
    Err("could not create a unique temp directory".to_string())
}

/// Stops servers (and removes directories) left behind by processes that died without
/// unwinding (SIGKILL, abort), once per process. A directory `sgdb-PID-...` whose PID
/// is gone is an orphan; its server is signalled only if its command line names that
/// directory, so a recycled pid is never hit.
pub(super) fn reap_orphans_once() {
    static REAPED: OnceLock<()> = OnceLock::new();
    REAPED.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(base_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = name
                .strip_prefix("sgdb-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let dir = entry.path();
            if let Some(server_pid) = std::fs::read_to_string(dir.join("mariadb.pid"))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            {
                let cmdline =
                    std::fs::read(format!("/proc/{server_pid}/cmdline")).unwrap_or_default();
                let needle = dir.to_string_lossy();
                if String::from_utf8_lossy(&cmdline).contains(needle.as_ref()) {
                    let _ = send_signal(server_pid, SIGCONT);
                    let _ = send_signal(server_pid, SIGKILL);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

pub(super) fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
