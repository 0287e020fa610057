//! TLS from clients to shardgate, with a real MariaDB behind the proxy: independent
//! clients (mysql_async on rustls, the `mariadb` CLI on OpenSSL, PyMySQL on Python's
//! ssl) verify the certificate the test made and run queries; what crosses the wire is
//! not plain text; `require_tls` users and `[tls] require` refuse plain logins; and
//! without `[tls]` an SSLRequest is refused as before.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{test_cert, unsharded, TestCert};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use mysql_async::prelude::*;
use shardgate::config::{ProxyConfig, User};
use shardgate::protocol::handshake::parse_greeting;
use shardgate::protocol::packet::put_packet;
use shardgate::protocol::tls::ServerTls;
use shardgate::protocol::{caps, wire};
use shardgate::vschema::VSchema;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The test users plus `secure`/`secure`, who may log in only over TLS.
fn users() -> Vec<User> {
    let mut users = common::test_users();
    let mut secure = User::new("secure", "secure", false);
    secure.require_tls = true;
    users.push(secure);
    users
}

async fn start(vs: VSchema, tls: Option<(&TestCert, bool)>) -> common::Proxy {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), users(), vs);
    config.migrations = None;
    config.tls = tls.map(|(c, require)| {
        ServerTls::from_pem_files(&c.cert, &c.key, require).expect("load the test certificate")
    });
    common::start_proxy_config(config).await
}

/// mysql_async options that insist on TLS and verify the server against `cert`
/// (hostname 127.0.0.1 included).
fn tls_opts(addr: &str, user: &str, cert: &TestCert) -> mysql_async::Opts {
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![cert.cert.clone().into()])
        .with_disable_built_in_roots(true);
    mysql_async::OptsBuilder::from_opts(common::mysql_opts(addr, user, user, Some("app")))
        .ssl_opts(ssl)
        .into()
}

fn plain_opts(addr: &str, user: &str) -> mysql_async::Opts {
    common::mysql_opts(addr, user, user, Some("app"))
}

fn server_error_code(e: &mysql_async::Error) -> Option<(u16, String)> {
    match e {
        mysql_async::Error::Server(s) => Some((s.code, s.message.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_the_cli_and_pymysql_verify_the_certificate_and_run_queries_over_tls() {
    let servers = common::start_servers(1);
    let cert = test_cert();
    let proxy = start(unsharded(&servers), Some((&cert, false))).await;
    let addr = proxy.addr_string();

    // (a) mysql_async (rustls), verifying the certificate against the test's own CA.
    let mut conn = mysql_async::Conn::new(tls_opts(&addr, "app", &cert))
        .await
        .expect("mysql_async over TLS through the proxy");
    conn.query_drop("CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY, v VARCHAR(20))")
        .await
        .expect("create");
    conn.query_drop("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        .await
        .expect("insert");
    let rows: Vec<(i32, String)> = conn
        .query("SELECT id, v FROM t ORDER BY id")
        .await
        .expect("select");
    assert_eq!(rows, vec![(1, "one".to_string()), (2, "two".to_string())]);
    // A result larger than one TLS record (16 KiB) and than the socket buffers.
    let big: Vec<String> = conn
        .query("SELECT REPEAT('x', 1000) FROM seq_1_to_2000")
        .await
        .expect("large result over TLS");
    assert_eq!(big.len(), 2000);
    assert!(big.iter().all(|r| r.len() == 1000));
    conn.disconnect().await.expect("disconnect");

    // (b) the mariadb CLI (OpenSSL), verifying the certificate, and its status report.
    let ca = format!("--ssl-ca={}", cert.cert.display());
    let out = common::cli_with_args(
        &addr,
        "app",
        "app",
        Some("app"),
        "SELECT v FROM t WHERE id = 2; \\s",
        &["--ssl", &ca, "--ssl-verify-server-cert"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mariadb --ssl through the proxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("two\n"), "{stdout}");
    assert!(
        stdout.contains("Cipher in use is"),
        "the CLI should report a TLS cipher:\n{stdout}"
    );

    // (c) PyMySQL (Python's ssl module), verifying certificate and hostname.
    let script = r#"
import ssl, sys
import pymysql
c = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="app", password="app",
                    database="app", ssl={"ca": sys.argv[3], "check_hostname": True})
cur = c.cursor()
cur.execute("SELECT v FROM t WHERE id = 1")
print(cur.fetchall()[0][0])
print(c._sock.version() if isinstance(c._sock, ssl.SSLSocket) else "plain")
c.close()
"#;
    let port = proxy.addr.port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                script,
                "127.0.0.1",
                &port,
                &cert.cert.display().to_string(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("PyMySQL within 30 s")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "PyMySQL over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"one"), "{stdout}");
    assert!(
        lines.get(1).is_some_and(|v| v.starts_with("TLSv1.")),
        "PyMySQL should be on TLS:\n{stdout}"
    );
    proxy.stop().await;
}

/// A TCP relay between a client and the proxy that records every byte it carries.
async fn recording_relay(target: std::net::SocketAddr) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, record.clone()));
            tokio::spawn(pump(sr, cw, record.clone()));
        }
    });
    (addr, seen)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_results_over_tls_are_not_plain_text_on_the_wire() {
    let servers = common::start_servers(1);
    let cert = test_cert();
    let proxy = start(unsharded(&servers), Some((&cert, false))).await;
    let canary = format!("canary-{:016x}", rand::random::<u64>());
    let sql = format!("SELECT '{canary}'");

    // Over TLS: neither the query nor its result shows on the wire, nor the user name.
    let (relay, seen) = recording_relay(proxy.addr).await;
    let mut conn = mysql_async::Conn::new(tls_opts(&relay, "app", &cert))
        .await
        .expect("TLS through the recording relay");
    let got: Option<String> = conn.query_first(&sql).await.expect("canary over TLS");
    assert_eq!(got.as_deref(), Some(canary.as_str()));
    conn.disconnect().await.expect("disconnect");
    let wire = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        wire.len() > 1000,
        "the relay should have carried the session"
    );
    assert!(
        !contains(&wire, canary.as_bytes()),
        "the canary crossed the wire in clear text over TLS"
    );
    assert!(
        !contains(&wire, b"\0app\0"),
        "the handshake response (user name) should be encrypted"
    );

    // The same without TLS: the check does see clear text when there is some.
    let (relay, seen) = recording_relay(proxy.addr).await;
    let mut conn = mysql_async::Conn::new(plain_opts(&relay, "app"))
        .await
        .expect("plain through the recording relay");
    let got: Option<String> = conn.query_first(&sql).await.expect("canary in clear");
    assert_eq!(got.as_deref(), Some(canary.as_str()));
    conn.disconnect().await.expect("disconnect");
    let wire = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        contains(&wire, canary.as_bytes()),
        "without TLS the canary should be visible on the wire"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_users_and_a_tls_only_proxy_refuse_plain_logins_with_error_3159() {
    let servers = common::start_servers(1);
    let vs = unsharded(&servers);
    let cert = test_cert();

    // Per user: `secure` needs TLS, `app` does not.
    let proxy = start(vs.clone(), Some((&cert, false))).await;
    let addr = proxy.addr_string();
    let e = mysql_async::Conn::new(plain_opts(&addr, "secure"))
        .await
        .expect_err("a require_tls user without TLS");
    let (code, message) = server_error_code(&e).unwrap_or_else(|| panic!("server error: {e}"));
    assert_eq!(code, 3159, "{message}");
    assert!(message.contains("'secure'"), "{message}");
    let mut conn = mysql_async::Conn::new(tls_opts(&addr, "secure", &cert))
        .await
        .expect("the require_tls user over TLS");
    let one: Option<i32> = conn.query_first("SELECT 1").await.expect("query");
    assert_eq!(one, Some(1));
    conn.disconnect().await.expect("disconnect");
    // A wrong password is still access denied, not a hint that the user needs TLS.
    let e = mysql_async::Conn::new(common::mysql_opts(&addr, "secure", "wrong", Some("app")))
        .await
        .expect_err("wrong password");
    assert_eq!(server_error_code(&e).map(|c| c.0), Some(1045), "{e}");
    let conn = mysql_async::Conn::new(plain_opts(&addr, "app"))
        .await
        .expect("other users may still log in without TLS");
    conn.disconnect().await.expect("disconnect");
    proxy.stop().await;

    // Proxy-wide: `[tls] require = true`.
    let proxy = start(vs, Some((&cert, true))).await;
    let addr = proxy.addr_string();
    let e = mysql_async::Conn::new(plain_opts(&addr, "app"))
        .await
        .expect_err("a plain login on a TLS-only proxy");
    let (code, message) = server_error_code(&e).unwrap_or_else(|| panic!("server error: {e}"));
    assert_eq!(code, 3159);
    assert_eq!(
        message,
        "Connections using insecure transport are prohibited while --require_secure_transport=ON."
    );
    let out = common::cli_with_args(
        &addr,
        "app",
        "app",
        Some("app"),
        "SELECT 1",
        &["--skip-ssl"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR 3159 (HY000)"), "{stderr}");
    let mut conn = mysql_async::Conn::new(tls_opts(&addr, "app", &cert))
        .await
        .expect("TLS on a TLS-only proxy");
    let one: Option<i32> = conn.query_first("SELECT 1").await.expect("query");
    assert_eq!(one, Some(1));
    conn.disconnect().await.expect("disconnect");
    proxy.stop().await;
}

/// Reads the greeting and sends an SSLRequest; returns the greeting's capabilities and
/// the stream.
async fn greet_and_request_ssl(addr: std::net::SocketAddr) -> (u32, TcpStream) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let (_, g) = common::raw_read(&mut s).await.expect("greeting");
    let g = parse_greeting(&g).expect("valid greeting");
    let mut req = Vec::with_capacity(32);
    req.extend_from_slice(&(caps::BACKEND_BASE | caps::SSL).to_le_bytes());
    req.extend_from_slice(&(1u32 << 24).to_le_bytes());
    req.push(45);
    req.extend_from_slice(&[0u8; 23]);
    let mut out = BytesMut::new();
    put_packet(&mut out, 1, &req);
    s.write_all(&out).await.expect("send SSLRequest");
    (g.capabilities, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_configured_ssl_is_not_offered_and_an_ssl_request_is_refused() {
    let servers = common::start_servers(1);
    let vs = unsharded(&servers);
    let cert = test_cert();

    let plain = start(vs.clone(), None).await;
    let (offered, mut s) = greet_and_request_ssl(plain.addr).await;
    assert_eq!(offered & caps::SSL, 0, "CLIENT_SSL must not be offered");
    let (seq, err) = common::raw_read(&mut s).await.expect("an answer");
    assert_eq!(seq, 2);
    let e = wire::parse_err(&err).expect("an ERR packet");
    assert_eq!(e.code, 1235);
    assert!(e.message.contains("TLS"), "{}", e.message);
    plain.stop().await;

    // With TLS configured the same request gets a TLS handshake, not an error.
    let tls = start(vs, Some((&cert, false))).await;
    let (offered, mut s) = greet_and_request_ssl(tls.addr).await;
    assert_ne!(offered & caps::SSL, 0, "CLIENT_SSL offered");
    // A TLS 1.2 ClientHello with nothing acceptable in it: the proxy answers with a
    // TLS alert record (content type 21), not a MySQL packet.
    let hello: [u8; 9] = [22, 3, 1, 0, 4, 1, 0, 0, 0];
    s.write_all(&hello).await.expect("send a bogus ClientHello");
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut first))
        .await
        .expect("an answer in time")
        .unwrap_or(0);
    assert!(n == 0 || first[0] == 21, "got byte {}", first[0]);
    tls.stop().await;
}

/// A client that writes its SSLRequest and its TLS ClientHello in one go (as libmariadb
/// and most drivers do, without waiting): the proxy must hand the bytes it already read
/// behind the SSLRequest to the TLS handshake. Driven by hand with a blocking socket and
/// a bare rustls client so that both really leave in one write.
fn login_with_ssl_request_and_client_hello_in_one_write(
    addr: std::net::SocketAddr,
    cert: &TestCert,
) -> Vec<u8> {
    use std::io::{Read, Write};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use shardgate::protocol::auth::native_token;
    use shardgate::protocol::handshake::{build_handshake_response, HandshakeResponse};

    fn read_packet(r: &mut impl Read) -> (u8, Vec<u8>) {
        let mut h = [0u8; 4];
        r.read_exact(&mut h).expect("packet header");
        let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
        let mut p = vec![0u8; len];
        r.read_exact(&mut p).expect("packet payload");
        (h[3], p)
    }

    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let (_, g) = read_packet(&mut sock);
    let g = parse_greeting(&g).expect("greeting");
    assert_ne!(g.capabilities & caps::SSL, 0);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert.cert).expect("test cert"))
        .expect("trust the test cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");

    let caps_wanted = caps::BACKEND_BASE | caps::DEPRECATE_EOF | caps::SSL;
    let mut first = BytesMut::new();
    let mut ssl_request = Vec::with_capacity(32);
    ssl_request.extend_from_slice(&caps_wanted.to_le_bytes());
    ssl_request.extend_from_slice(&(1u32 << 24).to_le_bytes());
    ssl_request.push(45);
    ssl_request.extend_from_slice(&[0u8; 23]);
    put_packet(&mut first, 1, &ssl_request);
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).expect("ClientHello");
    assert!(!hello.is_empty());
    first.extend_from_slice(&hello);
    sock.write_all(&first)
        .expect("SSLRequest + ClientHello in one write");

    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    let resp = HandshakeResponse {
        capabilities: caps_wanted,
        max_packet: 1 << 24,
        collation: 45,
        user: "secure".into(),
        auth_response: native_token(b"secure", &g.scramble),
        database: Some("app".into()),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: vec![],
        ext_capabilities: 0,
    };
    let mut out = BytesMut::new();
    put_packet(&mut out, 2, &build_handshake_response(&resp));
    stream.write_all(&out).expect("handshake response over TLS");
    let (seq, ok) = read_packet(&mut stream);
    assert_eq!(seq, 3, "the sequence goes on after the SSLRequest");
    assert!(ok.starts_with(&[0]), "login OK over TLS: {ok:?}");
    let mut out = BytesMut::new();
    put_packet(&mut out, 0, b"\x03SELECT 'early-bytes'");
    stream.write_all(&out).expect("query over TLS");
    let mut answer = Vec::new();
    for _ in 0..4 {
        // column count, column definition, row, OK (DEPRECATE_EOF)
        answer.extend_from_slice(&read_packet(&mut stream).1);
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_sent_right_behind_the_ssl_request_is_not_lost() {
    let servers = common::start_servers(1);
    let cert = test_cert();
    let proxy = start(unsharded(&servers), Some((&cert, false))).await;
    let addr = proxy.addr;
    let cert = Arc::new(cert);
    let c = cert.clone();
    let answer = tokio::task::spawn_blocking(move || {
        login_with_ssl_request_and_client_hello_in_one_write(addr, &c)
    })
    .await
    .expect("the raw TLS client should not panic");
    assert!(contains(&answer, b"early-bytes"), "{answer:?}");
    proxy.stop().await;
}

#[test]
fn the_config_file_reads_tls_paths_relative_to_itself_and_refuses_what_cannot_work() {
    let cert = test_cert();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(&cert.cert, dir.path().join("cert.pem")).expect("copy cert");
    std::fs::copy(&cert.key, dir.path().join("key.pem")).expect("copy key");
    std::fs::write(
        dir.path().join("vschema.toml"),
        "[clusters.c1]\nprimary = \"127.0.0.1:1\"\nuser = \"u\"\npassword = \"p\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
    )
    .expect("write vschema");
    let load = |body: &str| {
        let path = dir.path().join("shardgate.toml");
        std::fs::write(&path, format!("vschema = \"vschema.toml\"\n{body}")).expect("write");
        ProxyConfig::load(&path)
    };
    let users = "[[users]]\nname = \"app\"\npassword = \"app\"\n\
                 [[users]]\nname = \"secure\"\npassword = \"s\"\nrequire_tls = true\n";

    let config = load(&format!(
        "{users}[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nrequire = true\n"
    ))
    .expect("a valid TLS config");
    assert!(config.tls.as_ref().is_some_and(|t| t.require));
    let flags: Vec<(&str, bool)> = config
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.require_tls))
        .collect();
    assert_eq!(flags, vec![("app", false), ("secure", true)]);
    let config = load(&format!(
        "{users}[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
    ))
    .expect("require defaults to false");
    assert!(config.tls.as_ref().is_some_and(|t| !t.require));

    let e = load(users).expect_err("require_tls without [tls]");
    assert!(e.contains("secure") && e.contains("[tls]"), "{e}");
    let e = load(&format!(
        "{users}[tls]\ncert = \"cert.pem\"\nkey = \"nope.pem\"\n"
    ))
    .expect_err("a missing key file");
    assert!(e.contains("nope.pem"), "{e}");
    let e = load(&format!(
        "{users}[tls]\ncert = \"key.pem\"\nkey = \"key.pem\"\n"
    ))
    .expect_err("a key where the certificate should be");
    assert!(e.contains("certificate"), "{e}");
    let e = load(&format!(
        "{users}[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nrequired = true\n"
    ))
    .expect_err("a misspelt key");
    assert!(e.contains("required"), "{e}");
}
