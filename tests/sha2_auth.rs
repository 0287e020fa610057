//! `caching_sha2_password` for clients, with a real MariaDB behind the proxy: a raw
//! client reads the exchange byte by byte (full authentication with the RSA key, then
//! the fast path; auth switches both ways; wrong and clear-text passwords refused), and
//! independent clients (mysql_async, PyMySQL, the `mariadb` CLI) log in without TLS
//! (RSA) and over TLS (clear text). The config file's `auth_plugin` and `[auth]
//! rsa_private_key` are checked last.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mysql_async::prelude::Queryable;
use shardgate::config::{ProxyConfig, User};
use shardgate::protocol::auth::{native_token, AuthPlugin};
use shardgate::protocol::caps;
use shardgate::protocol::handshake::{
    build_handshake_response, parse_auth_switch, parse_greeting, HandshakeResponse,
};
use shardgate::protocol::packet::put_packet;
use shardgate::protocol::sha2_auth::{encrypt_password, sha2_token, RsaKeys};
use shardgate::protocol::tls::ServerTls;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SHA2: &str = "caching_sha2_password";
const NATIVE: &str = "mysql_native_password";

fn sha2_user(name: &str, password: &str) -> User {
    let mut u = User::new(name, password, false);
    u.auth_plugin = AuthPlugin::CachingSha2Password;
    u
}

/// `app`/`app` and `admin`/`admin` (native), and caching_sha2 users: `sha`, `other`,
/// `shapy`, `shacli` (password `<name>-secret`) and `nopw` (empty password).
fn users() -> Vec<User> {
    let mut users = common::test_users();
    for name in ["sha", "other", "shapy", "shacli"] {
        users.push(sha2_user(name, &format!("{name}-secret")));
    }
    users.push(sha2_user("nopw", ""));
    users
}

async fn start(
    servers: &[shardgate::demo::localdb::LocalMariaDb],
    tls: Option<&common::TestCert>,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> common::Proxy {
    let vs = common::unsharded(servers);
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), users(), vs);
    config.migrations = None;
    config.tls = tls.map(|c| {
        ServerTls::from_pem_files(&c.cert, &c.key, false).expect("load the test certificate")
    });
    tweak(&mut config);
    common::start_proxy_config(config).await
}

/// A raw connection that has read the greeting.
struct Raw {
    s: TcpStream,
    scramble: Vec<u8>,
    greeting_plugin: String,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let (seq, g) = common::raw_read(&mut s).await.expect("greeting");
        assert_eq!(seq, 0);
        let g = parse_greeting(&g).expect("valid greeting");
        Raw {
            s,
            scramble: g.scramble,
            greeting_plugin: g.auth_plugin,
        }
    }

    async fn send(&mut self, seq: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        put_packet(&mut out, seq, payload);
        self.s.write_all(&out).await.expect("send");
    }

    /// The next packet; its sequence id must be `seq`.
    async fn expect(&mut self, seq: u8) -> Vec<u8> {
        let (s, p) = common::raw_read(&mut self.s).await.expect("a reply");
        assert_eq!(s, seq, "sequence id of {p:?}");
        p
    }

    /// Sends a handshake response for `plugin` with `token` (sequence id 1).
    async fn hello(&mut self, user: &str, plugin: &str, token: Vec<u8>, extra_caps: u32) {
        let resp = HandshakeResponse {
            capabilities: (caps::BACKEND_BASE | caps::DEPRECATE_EOF | extra_caps),
            max_packet: 1 << 24,
            collation: 45,
            user: user.into(),
            auth_response: token,
            database: Some("app".into()),
            auth_plugin: Some(plugin.into()),
            attributes: vec![],
            ext_capabilities: 0,
        };
        self.send(1, &build_handshake_response(&resp)).await;
    }

    /// Starts a caching_sha2 login with the greeting's nonce.
    async fn sha2_hello(addr: &str, user: &str, password: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        let token = sha2_token(password.as_bytes(), &raw.scramble);
        raw.hello(user, SHA2, token, 0).await;
        raw
    }
}

fn is_ok(p: &[u8]) -> bool {
    p.first() == Some(&0)
}

fn err_code(p: &[u8]) -> Option<u16> {
    common::raw_err(p).map(|(code, _, _)| code)
}

const FULL: [u8; 2] = [0x01, 0x04];
const FAST: [u8; 2] = [0x01, 0x03];

/// The full authentication of a raw client without TLS that asks for the key:
/// `0x02` → `0x01` + PEM → RSA ciphertext. Returns (PEM, the server's last reply).
async fn rsa_full_auth(raw: &mut Raw, password: &str) -> (String, Vec<u8>) {
    assert_eq!(
        raw.expect(2).await,
        FULL,
        "a cache miss asks for full authentication"
    );
    raw.send(3, &[0x02]).await;
    let key = raw.expect(4).await;
    assert_eq!(key.first(), Some(&0x01), "the key comes as AuthMoreData");
    let pem = String::from_utf8(key[1..].to_vec()).expect("PEM is text");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let ct = encrypt_password(&pem, password.as_bytes(), &raw.scramble).expect("encrypt");
    raw.send(5, &ct).await;
    let reply = raw.expect(6).await;
    (pem, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_exchange_full_authentication_then_the_fast_path_and_refusals() {
    let servers = common::start_servers(1);
    let keys = Arc::new(RsaKeys::generate().expect("keygen"));
    let configured_pem = keys.public_pem().to_string();
    let proxy = start(&servers, None, |c| {
        c.rsa_key = Some(keys);
        // Many failures from one address below: no throttling in this test.
        c.limits.login_throttle_failures = 0;
    })
    .await;
    let addr = proxy.addr_string();

    // Mixed users: the greeting names mysql_native_password.
    let raw = Raw::connect(&addr).await;
    assert_eq!(raw.greeting_plugin, NATIVE);
    drop(raw);

    // (1) First login of `sha`: empty cache → full authentication with the configured
    // RSA key; then the session works.
    let mut raw = Raw::sha2_hello(&addr, "sha", "sha-secret").await;
    let (pem, reply) = rsa_full_auth(&mut raw, "sha-secret").await;
    assert_eq!(pem, configured_pem, "the configured key is the one served");
    assert!(is_ok(&reply), "full authentication succeeds: {reply:?}");
    common::raw_query(&mut raw.s, b"SELECT 1").await;
    let (_, first) = common::raw_read(&mut raw.s).await.expect("result");
    assert_eq!(first, vec![1], "one column");
    drop(raw);

    // Second login: the cache vouches for it, fast_auth_success then OK.
    let mut raw = Raw::sha2_hello(&addr, "sha", "sha-secret").await;
    assert_eq!(
        raw.expect(2).await,
        FAST,
        "the second login takes the fast path"
    );
    assert!(is_ok(&raw.expect(3).await));
    drop(raw);

    // (3) A wrong password with a cached user: the scramble does not match, so full
    // authentication (as MySQL does), which fails with 1045.
    let mut raw = Raw::sha2_hello(&addr, "sha", "wrong").await;
    let (_, reply) = rsa_full_auth(&mut raw, "wrong").await;
    let (code, state, msg) = common::raw_err(&reply).expect("an error");
    assert_eq!((code, state.as_str()), (1045, "28000"));
    assert!(
        msg.contains("'sha'") && msg.contains("using password: YES"),
        "{msg}"
    );
    // A wrong password on an empty cache (`other`), from a client that already has
    // the key (no 0x02): 1045, and the right one then works the same way.
    for (password, ok) in [("wrong", false), ("other-secret", true)] {
        let mut raw = Raw::sha2_hello(&addr, "other", password).await;
        assert_eq!(raw.expect(2).await, FULL);
        let ct = encrypt_password(&pem, password.as_bytes(), &raw.scramble).expect("encrypt");
        raw.send(3, &ct).await;
        let reply = raw.expect(4).await;
        if ok {
            assert!(is_ok(&reply), "{reply:?}");
        } else {
            assert_eq!(err_code(&reply), Some(1045), "{reply:?}");
        }
    }

    // (6) The password in clear without TLS is refused (1045), even the right one, and
    // does not fill the cache.
    let mut raw = Raw::sha2_hello(&addr, "shacli", "shacli-secret").await;
    assert_eq!(raw.expect(2).await, FULL);
    raw.send(3, b"shacli-secret\0").await;
    assert_eq!(err_code(&raw.expect(4).await), Some(1045));
    let mut raw = Raw::sha2_hello(&addr, "shacli", "shacli-secret").await;
    assert_eq!(raw.expect(2).await, FULL, "a refused login fills no cache");
    drop(raw);

    // An unknown user is treated as a user of the greeting's plugin (native here):
    // switched from caching_sha2 like `app` below, then 1045.
    let mut raw = Raw::sha2_hello(&addr, "nobody", "x").await;
    let (plugin, nonce) = parse_auth_switch(&raw.expect(2).await).expect("an auth switch");
    assert_eq!(plugin, NATIVE);
    raw.send(3, &native_token(b"x", &nonce)).await;
    assert_eq!(err_code(&raw.expect(4).await), Some(1045));

    // An empty password: a lone NUL (libmysqlclient) or nothing is answered OK at once.
    for token in [vec![0u8], vec![]] {
        let mut raw = Raw::connect(&addr).await;
        raw.hello("nopw", SHA2, token, 0).await;
        assert!(is_ok(&raw.expect(2).await));
    }
    // ... and claims no password for a user that has one.
    let mut raw = Raw::connect(&addr).await;
    raw.hello("sha", SHA2, vec![], 0).await;
    let (code, _, msg) = common::raw_err(&raw.expect(2).await).expect("an error");
    assert_eq!(code, 1045);
    assert!(msg.contains("using password: NO"), "{msg}");

    // Malformed: an answer larger than any password or ciphertext → bad handshake;
    // a scramble of the wrong length → access denied.
    let mut raw = Raw::sha2_hello(&addr, "other", "x").await;
    assert_eq!(raw.expect(2).await, FULL);
    raw.send(3, &vec![7u8; 5000]).await;
    assert_eq!(err_code(&raw.expect(4).await), Some(1043));
    let mut raw = Raw::connect(&addr).await;
    raw.hello("sha", SHA2, vec![1; 20], 0).await;
    assert_eq!(err_code(&raw.expect(2).await), Some(1045));

    // (4) A native user whose client starts with caching_sha2: switched to native with
    // a fresh 20-byte nonce (+ NUL), then logged in.
    let mut raw = Raw::sha2_hello(&addr, "app", "app").await;
    let switch = raw.expect(2).await;
    assert_eq!(switch.last(), Some(&0), "the nonce is NUL-terminated");
    let (plugin, nonce) = parse_auth_switch(&switch).expect("an auth switch");
    assert_eq!(plugin, NATIVE);
    assert_eq!(nonce.len(), 20);
    assert_ne!(nonce, raw.scramble, "a fresh nonce");
    raw.send(3, &native_token(b"app", &nonce)).await;
    assert!(is_ok(&raw.expect(4).await));

    // (5) A caching_sha2 user whose client starts with native: switched to
    // caching_sha2 with a fresh nonce; `other` is cached now, so the fast path.
    let mut raw = Raw::connect(&addr).await;
    let token = native_token(b"other-secret", &raw.scramble);
    raw.hello("other", NATIVE, token, 0).await;
    let switch = raw.expect(2).await;
    let (plugin, nonce) = parse_auth_switch(&switch).expect("an auth switch");
    assert_eq!((plugin.as_str(), nonce.len()), (SHA2, 20));
    assert_ne!(nonce, raw.scramble, "a fresh nonce");
    raw.send(3, &sha2_token(b"other-secret", &nonce)).await;
    assert_eq!(raw.expect(4).await, FAST);
    assert!(is_ok(&raw.expect(5).await));
    // A client that cannot follow an auth switch (no CLIENT_PLUGIN_AUTH) gets 1251.
    let mut raw = Raw::connect(&addr).await;
    let resp = HandshakeResponse {
        capabilities: (caps::BACKEND_BASE | caps::DEPRECATE_EOF) & !caps::PLUGIN_AUTH,
        max_packet: 1 << 24,
        collation: 45,
        user: "other".into(),
        auth_response: native_token(b"other-secret", &raw.scramble),
        ..Default::default()
    };
    raw.send(1, &build_handshake_response(&resp)).await;
    assert_eq!(err_code(&raw.expect(2).await), Some(1251));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_caching_sha2_users_are_greeted_with_caching_sha2() {
    let servers = common::start_servers(1);
    let proxy = start(&servers, None, |c| {
        c.users = vec![sha2_user("sha", "sha-secret")];
    })
    .await;
    let addr = proxy.addr_string();
    let raw = Raw::connect(&addr).await;
    assert_eq!(raw.greeting_plugin, SHA2);
    // No key configured: one was generated; full authentication then fast path.
    let mut raw = Raw::sha2_hello(&addr, "sha", "sha-secret").await;
    let (_, reply) = rsa_full_auth(&mut raw, "sha-secret").await;
    assert!(is_ok(&reply), "{reply:?}");
    // An unknown user: the same exchange as a caching_sha2 user's, then 1045.
    let mut raw = Raw::sha2_hello(&addr, "nobody", "x").await;
    let (_, reply) = rsa_full_auth(&mut raw, "x").await;
    assert_eq!(err_code(&reply), Some(1045));
    // mysql_async follows the greeting: no switch, the fast path.
    let mut conn =
        mysql_async::Conn::new(common::mysql_opts(&addr, "sha", "sha-secret", Some("app")))
            .await
            .expect("mysql_async as a caching_sha2 user");
    let one: Option<i64> = conn.query_first("SELECT 1").await.expect("query");
    assert_eq!(one, Some(1));
    conn.disconnect().await.expect("disconnect");
    proxy.stop().await;
}

/// Runs a PyMySQL script with `args`; returns (success, stdout, stderr).
async fn pymysql(script: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("PyMySQL within 30 s")
    .expect("run python3");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Logs in with PyMySQL (argv: host port user password [ca] [start-with-sha2]) and
/// prints `ok <SELECT 1>`, or `err <code>`.
const PYMYSQL_LOGIN: &str = r#"
import sys
import pymysql
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ca = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None
if len(sys.argv) > 6 and sys.argv[6] == "start-sha2":
    # Answer the greeting with caching_sha2_password whatever it names.
    orig = pymysql.connections.Connection._get_server_information
    def patched(self):
        orig(self)
        self._auth_plugin_name = "caching_sha2_password"
    pymysql.connections.Connection._get_server_information = patched
try:
    c = pymysql.connect(host=host, port=port, user=user, password=password,
                        database="app", ssl={"ca": ca} if ca else None)
except pymysql.err.OperationalError as e:
    print("err", e.args[0])
    sys.exit(0)
cur = c.cursor()
cur.execute("SELECT 1")
print("ok", cur.fetchall()[0][0], "tls" if c._secure else "plain")
c.close()
"#;

async fn pymysql_login(
    addr: &std::net::SocketAddr,
    user: &str,
    password: &str,
    ca: Option<&std::path::Path>,
    start_sha2: bool,
) -> String {
    let port = addr.port().to_string();
    let ca = ca.map(|p| p.display().to_string()).unwrap_or_default();
    let start = if start_sha2 { "start-sha2" } else { "" };
    let (ok, stdout, stderr) = pymysql(
        PYMYSQL_LOGIN,
        &["127.0.0.1", &port, user, password, &ca, start],
    )
    .await;
    assert!(ok, "PyMySQL as {user}: {stderr}");
    stdout.trim().to_string()
}

/// `shardgate_caching_sha2_logins_total`: (fast path, full authentication).
async fn sha2_counts(metrics: std::net::SocketAddr) -> (u64, u64) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(metrics).await.expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("response");
    let value = |path: &str| -> u64 {
        let series = format!("shardgate_caching_sha2_logins_total{{path=\"{path}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    };
    (value("fast"), value("full"))
}

/// Whether a raw caching_sha2 login of `user` is answered with the fast path now.
async fn cached(addr: &str, user: &str, password: &str) -> bool {
    let mut raw = Raw::sha2_hello(addr, user, password).await;
    raw.expect(2).await == FAST
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_and_pymysql_log_in_without_tls_through_the_rsa_key() {
    let servers = common::start_servers(1);
    let metrics = common::free_local_addr();
    // Throttling on (one failure, 300 ms) to check that caching_sha2 failures count.
    let proxy = start(&servers, None, |c| {
        c.limits.login_throttle_failures = 1;
        c.limits.login_throttle_delay = Duration::from_millis(300);
        c.metrics_listen = Some(metrics);
    })
    .await;
    let addr = proxy.addr_string();

    // (1) mysql_async, plain TCP: switched from native (5), cache miss, it asks for
    // the key (0x02) and sends the RSA-encrypted password; the cache is then filled.
    assert!(!cached(&addr, "sha", "sha-secret").await);
    for _ in 0..2 {
        let mut conn =
            mysql_async::Conn::new(common::mysql_opts(&addr, "sha", "sha-secret", Some("app")))
                .await
                .expect("mysql_async as a caching_sha2 user without TLS");
        let one: Option<i64> = conn.query_first("SELECT 1").await.expect("query");
        assert_eq!(one, Some(1));
        conn.disconnect().await.expect("disconnect");
    }
    // The first login was a full authentication, the second took the fast path.
    assert_eq!(sha2_counts(metrics).await, (1, 1));
    assert!(
        cached(&addr, "sha", "sha-secret").await,
        "mysql_async's login filled the cache"
    );
    assert_eq!(sha2_counts(metrics).await, (2, 1));

    // PyMySQL (with `cryptography` for RSA), plain TCP, switched from native (5).
    assert!(!cached(&addr, "shapy", "shapy-secret").await);
    assert_eq!(
        pymysql_login(&proxy.addr, "shapy", "shapy-secret", None, false).await,
        "ok 1 plain"
    );
    assert!(
        cached(&addr, "shapy", "shapy-secret").await,
        "PyMySQL's login filled the cache"
    );
    assert_eq!(sha2_counts(metrics).await, (3, 2));
    // Again, now with the cache filled: PyMySQL hashes the switch's nonce with its
    // trailing NUL, so it misses the fast path and authenticates in full again.
    assert_eq!(
        pymysql_login(&proxy.addr, "shapy", "shapy-secret", None, false).await,
        "ok 1 plain"
    );
    assert_eq!(sha2_counts(metrics).await, (3, 3));
    // (4) A native user from PyMySQL starting with caching_sha2: switched to native.
    assert_eq!(
        pymysql_login(&proxy.addr, "app", "app", None, true).await,
        "ok 1 plain"
    );
    // A caching_sha2 user from PyMySQL starting with it: no switch, the fast path.
    assert_eq!(
        pymysql_login(&proxy.addr, "shapy", "shapy-secret", None, true).await,
        "ok 1 plain"
    );
    assert_eq!(sha2_counts(metrics).await, (4, 3));

    // The mariadb CLI without TLS: libmariadb asks for the key itself.
    let out = common::cli_with_args(
        &addr,
        "shacli",
        "shacli-secret",
        Some("app"),
        "SELECT 1",
        &["--skip-ssl"],
    );
    assert!(
        out.status.success(),
        "mariadb --skip-ssl as a caching_sha2 user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert_eq!(sha2_counts(metrics).await, (4, 4), "a full authentication");

    // (3) Wrong passwords: 1045 from both clients.
    let e = mysql_async::Conn::new(common::mysql_opts(&addr, "sha", "wrong", Some("app")))
        .await
        .expect_err("a wrong password");
    match e {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1045, "{}", e.message),
        other => panic!("expected 1045, got {other:?}"),
    }
    assert_eq!(
        pymysql_login(&proxy.addr, "shapy", "wrong", None, false).await,
        "err 1045"
    );
    // Failures are throttled as for native users: the next attempt, right or wrong,
    // waits before its first answer (here the fast path's).
    let started = std::time::Instant::now();
    assert!(cached(&addr, "sha", "sha-secret").await);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "throttled: {:?}",
        started.elapsed()
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_password_goes_in_clear_and_fills_the_cache() {
    let servers = common::start_servers(1);
    let cert = common::test_cert();
    let proxy = start(&servers, Some(&cert), |c| {
        c.limits.login_throttle_failures = 0;
    })
    .await;
    let addr = proxy.addr_string();
    let tls_opts = |user: &str, password: &str| -> mysql_async::Opts {
        let ssl = mysql_async::SslOpts::default()
            .with_root_certs(vec![cert.cert.clone().into()])
            .with_disable_built_in_roots(true);
        mysql_async::OptsBuilder::from_opts(common::mysql_opts(&addr, user, password, Some("app")))
            .ssl_opts(ssl)
            .into()
    };

    // (2) mysql_async over TLS: cache miss, the password in clear over TLS.
    assert!(!cached(&addr, "sha", "sha-secret").await);
    let mut conn = mysql_async::Conn::new(tls_opts("sha", "sha-secret"))
        .await
        .expect("mysql_async over TLS as a caching_sha2 user");
    let one: Option<i64> = conn.query_first("SELECT 1").await.expect("query");
    assert_eq!(one, Some(1));
    conn.disconnect().await.expect("disconnect");
    assert!(
        cached(&addr, "sha", "sha-secret").await,
        "the TLS login filled the cache"
    );
    let e = mysql_async::Conn::new(tls_opts("other", "wrong"))
        .await
        .expect_err("a wrong password over TLS");
    match e {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1045, "{}", e.message),
        other => panic!("expected 1045, got {other:?}"),
    }

    // PyMySQL over TLS.
    assert!(!cached(&addr, "shapy", "shapy-secret").await);
    assert_eq!(
        pymysql_login(
            &proxy.addr,
            "shapy",
            "shapy-secret",
            Some(&cert.cert),
            false
        )
        .await,
        "ok 1 tls"
    );
    assert!(cached(&addr, "shapy", "shapy-secret").await);
    assert_eq!(
        pymysql_login(&proxy.addr, "other", "wrong", Some(&cert.cert), false).await,
        "err 1045"
    );

    // The mariadb CLI (libmariadb's caching_sha2_password plugin) over TLS.
    let ca = format!("--ssl-ca={}", cert.cert.display());
    let out = common::cli_with_args(
        &addr,
        "shacli",
        "shacli-secret",
        Some("app"),
        "SELECT 1",
        &["--ssl", &ca],
    );
    assert!(
        out.status.success(),
        "mariadb --ssl as a caching_sha2 user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert!(cached(&addr, "shacli", "shacli-secret").await);
    proxy.stop().await;
}

#[test]
fn the_config_file_reads_auth_plugins_and_the_rsa_key() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("vschema.toml"),
        "[clusters.c1]\nprimary = \"127.0.0.1:1\"\nuser = \"u\"\npassword = \"p\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
    )
    .expect("write vschema");
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("keygen");
    let pkcs8 = private.to_pkcs8_pem(LineEnding::LF).expect("pkcs8");
    let pkcs1 = private.to_pkcs1_pem(LineEnding::LF).expect("pkcs1");
    std::fs::write(dir.path().join("k8.pem"), pkcs8.as_bytes()).expect("write");
    std::fs::write(dir.path().join("k1.pem"), pkcs1.as_bytes()).expect("write");
    std::fs::write(dir.path().join("junk.pem"), "junk").expect("write");
    let load = |body: &str| {
        let path = dir.path().join("shardgate.toml");
        std::fs::write(&path, format!("vschema = \"vschema.toml\"\n{body}")).expect("write");
        ProxyConfig::load(&path)
    };
    let users = "[[users]]\nname = \"app\"\npassword = \"app\"\n\
                 [[users]]\nname = \"s\"\npassword = \"s\"\nauth_plugin = \"caching_sha2_password\"\n\
                 [[users]]\nname = \"n\"\npassword = \"n\"\nauth_plugin = \"mysql_native_password\"\n";
    let config = load(users).expect("plugins");
    let plugins: Vec<(&str, AuthPlugin)> = config
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.auth_plugin))
        .collect();
    assert_eq!(
        plugins,
        vec![
            ("app", AuthPlugin::NativePassword),
            ("s", AuthPlugin::CachingSha2Password),
            ("n", AuthPlugin::NativePassword),
        ]
    );
    assert!(config.rsa_key.is_none(), "generated at start-up, not here");

    let public = rsa::RsaPublicKey::from(&private);
    let expected = {
        use rsa::pkcs8::EncodePublicKey;
        public.to_public_key_pem(LineEnding::LF).expect("pem")
    };
    for file in ["k8.pem", "k1.pem"] {
        let config = load(&format!("{users}[auth]\nrsa_private_key = \"{file}\"\n"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let key = config.rsa_key.expect("the key");
        assert_eq!(key.public_pem(), expected, "{file}");
    }
    let e = load(&format!("{users}[auth]\nrsa_private_key = \"nope.pem\"\n"))
        .expect_err("a missing key file");
    assert!(e.contains("nope.pem"), "{e}");
    let e =
        load(&format!("{users}[auth]\nrsa_private_key = \"junk.pem\"\n")).expect_err("not a key");
    assert!(
        e.contains("junk.pem") && e.contains("RSA private key"),
        "{e}"
    );
    let e = load(&format!("{users}[auth]\nrsa_key = \"k1.pem\"\n")).expect_err("a misspelt key");
    assert!(e.contains("rsa_key"), "{e}");

    let e =
        load("[[users]]\nname = \"bob\"\npassword = \"b\"\nauth_plugin = \"sha256_password\"\n")
            .expect_err("an unknown plugin");
    assert!(
        e.contains("user bob") && e.contains("sha256_password"),
        "the error names the user and the plugin: {e}"
    );
}
