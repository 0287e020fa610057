//! Running the `mariadb` CLI and other MariaDB programs isolated from the user's setup.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `sql` as root over `socket` with the `mariadb` CLI in batch mode (values
/// tab-separated, tabs and newlines in them escaped), with a header line of column
/// names first if `column_names`.
pub(super) fn run_client(
    client: &Path,
    socket: &Path,
    sql: &str,
    column_names: bool,
) -> io::Result<String> {
    // The socket sits in the server's own directory, a harmless HOME.
    let home = socket.parent().unwrap_or_else(|| Path::new("/"));
    let mut child = mariadb_command(client, home)
        .arg("--protocol=SOCKET")
        .arg(format!("--socket={}", socket.display()))
        .arg("--user=root")
        .arg("--batch")
        .arg(if column_names {
            "--column-names"
        } else {
            "--skip-column-names"
        })
        .arg("--default-character-set=utf8mb4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    // Feed stdin and drain stderr on their own threads so a big script or a chatty
    // error can never block the pipe we are reading.
    let (out, err) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let _ = stdin.write_all(sql.as_bytes());
            // Dropping stdin sends EOF.
        });
        let err_reader = scope.spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out);
        let _ = writer.join();
        let err = err_reader.join().unwrap_or_default();
        (read.map(|_| out), err)
    });
    let status = child.wait()?;
    let out = out?;
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(io::Error::other(format!(
            "mariadb ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )))
    }
}

/// Directories a MariaDB program may need on its `PATH` besides its own (the install
/// script calls `my_print_defaults`, `resolveip`, `hostname`, `cp`...).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command for the MariaDB program `program` that sees nothing of the user's MySQL
/// setup: an empty environment except `PATH` (the program's own directory, then the
/// system's), `HOME` (our own directory `home`, so no `~/.my.cnf` or `~/.mylogin.cnf`
/// is found) and `LANG=C`; and `--no-defaults` as the first argument, which MariaDB
/// only honours there. Without this, a `MYSQL_PWD` in the user's shell makes our root
/// logins fail and `MYSQL_HOST`/`MYSQL_TCP_PORT`/`MYSQL_UNIX_PORT` point them elsewhere.
pub(super) fn mariadb_command(program: &Path, home: &Path) -> Command {
    let path = match program.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            let mut path = dir.as_os_str().to_owned();
            path.push(":");
            path.push(SYSTEM_PATH);
            path
        }
        _ => SYSTEM_PATH.into(),
    };
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("LANG", "C")
        .arg("--no-defaults");
    cmd
}

/// The last `lines` lines of a file, for error messages.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::files::unique_dir;
    use super::*;

    #[test]
    fn mariadb_commands_get_no_inherited_environment_and_no_option_files() {
        let cmd = mariadb_command(Path::new("/usr/sbin/mariadbd"), Path::new("/tmp/sgdb-x"));
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args.first().copied(), Some("--no-defaults".as_ref()));
        let mut envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        envs.sort();
        assert_eq!(
            envs,
            [
                ("HOME".to_string(), Some("/tmp/sgdb-x".to_string())),
                ("LANG".to_string(), Some("C".to_string())),
                ("PATH".to_string(), Some(format!("/usr/sbin:{SYSTEM_PATH}"))),
            ]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = unique_dir("sgtest").expect("temp dir");
        let path = dir.join("log");
        std::fs::write(&path, "1\n2\n3\n").expect("write log");
        assert_eq!(tail(&path, 2), "2\n3");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
