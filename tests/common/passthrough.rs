//! Helpers of the passthrough-fidelity tests: the passthrough vschema, whole answers
//! read from a raw connection, and Python client scripts.

use std::time::Duration;

use shardgate::demo::localdb::LocalMariaDb;
use shardgate::protocol::status;

/// One unsharded default keyspace `app` on `server`, `ddl = "direct"`: shardgate as
/// a plain passthrough.
pub fn passthrough_vschema(server: &LocalMariaDb) -> String {
    server
        .sql("CREATE DATABASE IF NOT EXISTS app")
        .expect("create app");
    format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\ndefault = true\nddl = \"direct\"\n",
        server.addr()
    )
}

/// One result of a command, as read from a raw (DEPRECATE_EOF) connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok {
        status: u16,
    },
    Err {
        code: u16,
    },
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Option<String>>>,
        status: u16,
    },
}

impl Answer {
    /// What the comparison looks at: the kind, the error code, the rows, and whether
    /// a transaction is open.
    pub fn summary(&self) -> String {
        match self {
            Answer::Ok { status: st } => {
                format!("ok in_trans={}", st & status::IN_TRANS != 0)
            }
            Answer::Err { code } => format!("err {code}"),
            Answer::Rows {
                rows, status: st, ..
            } => format!(
                "in_trans={} rows {}",
                st & status::IN_TRANS != 0,
                show_rows(rows)
            ),
        }
    }

    fn status(&self) -> u16 {
        match self {
            Answer::Ok { status } | Answer::Rows { status, .. } => *status,
            Answer::Err { .. } => 0,
        }
    }
}

/// `[["1","NULL"]]`: rows as text.
fn show_rows(rows: &[Vec<Option<String>>]) -> String {
    let row = |r: &Vec<Option<String>>| {
        let vals: Vec<String> = r
            .iter()
            .map(|v| {
                v.as_ref()
                    .map_or("NULL".to_string(), |s| format!("\"{s}\""))
            })
            .collect();
        format!("[{}]", vals.join(","))
    };
    format!("[{}]", rows.iter().map(row).collect::<Vec<_>>().join(","))
}

async fn read(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    super::raw_read(s).await.expect("a packet within 5 s").1
}

fn lenenc(p: &[u8], at: &mut usize) -> Option<u64> {
    let first = *p.get(*at)?;
    *at += 1;
    let n = match first {
        0..=0xfa => return Some(u64::from(first)),
        0xfb => return None,
        0xfc => 2,
        0xfd => 3,
        _ => 8,
    };
    let mut v = 0u64;
    for i in 0..n {
        v |= u64::from(*p.get(*at + i)?) << (8 * i);
    }
    *at += n;
    Some(v)
}

fn lenenc_str(p: &[u8], at: &mut usize) -> Option<String> {
    let n = lenenc(p, at)? as usize;
    let s = String::from_utf8_lossy(p.get(*at..*at + n)?).into_owned();
    *at += n;
    Some(s)
}

/// Reads one result (OK, ERR, or a text result set).
pub async fn read_answer(s: &mut tokio::net::TcpStream) -> Answer {
    let p = read(s).await;
    match p.first() {
        Some(0x00) => {
            let ok = shardgate::protocol::wire::parse_ok(&p).expect("OK");
            Answer::Ok { status: ok.status }
        }
        Some(0xff) => Answer::Err {
            code: u16::from_le_bytes([p[1], p[2]]),
        },
        _ => {
            let mut at = 0;
            let n = lenenc(&p, &mut at).expect("column count");
            let mut columns = Vec::new();
            for _ in 0..n {
                let c = read(s).await;
                let mut at = 0;
                for _ in 0..4 {
                    lenenc_str(&c, &mut at);
                }
                columns.push(lenenc_str(&c, &mut at).unwrap_or_default());
            }
            let mut rows = Vec::new();
            loop {
                let r = read(s).await;
                if r.first() == Some(&0xfe) && r.len() < 0xffffff {
                    let ok = shardgate::protocol::wire::parse_ok(&r).unwrap_or_default();
                    return Answer::Rows {
                        columns,
                        rows,
                        status: ok.status,
                    };
                }
                if r.first() == Some(&0xff) {
                    return Answer::Err {
                        code: u16::from_le_bytes([r[1], r[2]]),
                    };
                }
                let mut at = 0;
                let mut row = Vec::new();
                for _ in 0..n {
                    if r.get(at) == Some(&0xfb) {
                        at += 1;
                        row.push(None);
                    } else {
                        row.push(lenenc_str(&r, &mut at));
                    }
                }
                rows.push(row);
            }
        }
    }
}

/// Sends `sql` and reads its first result (see [`exchange_all`] for the others).
pub async fn exchange(s: &mut tokio::net::TcpStream, sql: &str) -> Answer {
    let all = exchange_all_answers(s, sql).await;
    all.into_iter().next().expect("an answer")
}

async fn exchange_all_answers(s: &mut tokio::net::TcpStream, sql: &str) -> Vec<Answer> {
    super::raw_query(s, sql.as_bytes()).await;
    let mut out = Vec::new();
    loop {
        let a = read_answer(s).await;
        let more = a.status() & status::MORE_RESULTS_EXISTS != 0;
        out.push(a);
        if !more {
            return out;
        }
    }
}

/// Sends `sql` and summarizes every result it gets.
pub async fn exchange_all(s: &mut tokio::net::TcpStream, sql: &str) -> String {
    exchange_all_answers(s, sql)
        .await
        .iter()
        .map(Answer::summary)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends `COM_SET_OPTION` with `option` and describes the answer's kind (first byte)
/// or error code.
pub async fn set_option(s: &mut tokio::net::TcpStream, option: u16) -> String {
    use tokio::io::AsyncWriteExt;
    let mut p = vec![0x1b];
    p.extend_from_slice(&option.to_le_bytes());
    let mut out = bytes::BytesMut::new();
    shardgate::protocol::packet::put_packet(&mut out, 0, &p);
    s.write_all(&out).await.expect("send");
    let (seq, a) = super::raw_read(s).await.expect("answer");
    match a.first() {
        Some(0xff) => format!("err {} seq {seq}", u16::from_le_bytes([a[1], a[2]])),
        Some(b) => format!("{b:#04x} len {} seq {seq}", a.len()),
        None => "empty".to_string(),
    }
}

/// Runs a Python script with the system's python3 (PyMySQL, mysqlclient) and returns
/// its trimmed stdout; panics with its stderr if it fails or takes over 60 s.
pub async fn python(script: &str, args: &[&str]) -> String {
    python_with("/usr/bin/python3", script, args).await
}

/// The virtualenv `scripts/ensure-deps` makes, with mysql-connector-python and MariaDB
/// Connector/Python from PyPI.
pub const VENV_PYTHON: &str = "/opt/shardgate-pyenv/bin/python";

/// [`python_both`] with the virtualenv's Python (mysql-connector-python), untagged.
pub async fn python_in_venv_both(
    script: &str,
    server: &LocalMariaDb,
    proxy: &super::Proxy,
) -> (String, String) {
    let direct_port = server.socket_addr().port().to_string();
    let proxy_port = proxy.addr.port().to_string();
    (
        python_with(VENV_PYTHON, script, &[&direct_port, "shardgate"]).await,
        python_with(VENV_PYTHON, script, &[&proxy_port, "app"]).await,
    )
}

/// Runs a Python script with interpreter `python`; see [`python`].
pub async fn python_with(python: &str, script: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python within 60 s")
    .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Python script's output run directly against `server` (as the backend account
/// `shardgate`) and through `proxy` (as `app`): its arguments are the port, the user
/// (also the password), then `extra` and, for each side, `direct`/`proxy` when
/// `tagged` (so each side can name its own tables).
pub async fn python_both(
    script: &str,
    server: &LocalMariaDb,
    proxy: &super::Proxy,
    tagged: bool,
) -> (String, String) {
    let direct_port = server.socket_addr().port().to_string();
    let proxy_port = proxy.addr.port().to_string();
    let mut direct: Vec<&str> = vec![&direct_port, "shardgate"];
    let mut via: Vec<&str> = vec![&proxy_port, "app"];
    if tagged {
        direct.push("direct");
        via.push("proxy");
    }
    (python(script, &direct).await, python(script, &via).await)
}

/// mysql_async options for `server` directly (as `shardgate`) and for `proxy` (as
/// `user`), both in database `app`.
pub fn opts_both(
    server: &LocalMariaDb,
    proxy: &super::Proxy,
    user: &str,
) -> (mysql_async::Opts, mysql_async::Opts) {
    (
        super::mysql_opts(&server.addr(), "shardgate", "shardgate", Some("app")),
        super::mysql_opts(&proxy.addr_string(), user, user, Some("app")),
    )
}
