//! TLS from shardgate to its backends, against real MariaDB servers serving TLS with
//! certificates a test CA (rcgen) signed: queries route over verified TLS (and the
//! servers, with `require_secure_transport=ON`, would refuse clear text anyway); a
//! certificate from another CA, or for another host name under `verify_identity`,
//! fails the connect with an error naming the cluster and never falls back to clear
//! text; a backend without TLS is refused; pooled connections (reuse,
//! `COM_RESET_CONNECTION`, packets over 16 MiB) work over TLS.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;

use mysql_async::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use shardgate::backend::{BackendTls, BackendTlsMode};
use shardgate::config::ProxyConfig;
use shardgate::demo::localdb::{LocalDbOptions, LocalDbTls, LocalMariaDb};
use shardgate::vschema::VSchema;

const SSL_CIPHER: &str =
    "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME='Ssl_cipher'";

/// A throwaway certificate authority.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key.
    fn server_cert(&self, names: &[&str]) -> (String, String) {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(names.clone()).expect("leaf params");
        p.distinguished_name.push(DnType::CommonName, &names[0]);
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("server key");
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Options for a server presenting a certificate for `names` signed by this CA.
    fn server_opts(&self, names: &[&str], require_secure_transport: bool) -> LocalDbOptions {
        let (cert_pem, key_pem) = self.server_cert(names);
        LocalDbOptions {
            tls: Some(LocalDbTls {
                cert_pem,
                key_pem,
                ca_pem: Some(self.pem()),
                require_secure_transport,
            }),
            ..LocalDbOptions::default()
        }
    }

    fn backend_tls(&self, mode: BackendTlsMode) -> BackendTls {
        BackendTls::from_pem(self.pem().as_bytes(), mode, None).expect("backend TLS config")
    }
}

/// Clusters `c1`.. over `servers`; keyspace `app` sharded over all of them, and one
/// unsharded keyspace `kN` (database `kN`) per server, to run statements on each.
fn vschema_toml(servers: &[LocalMariaDb]) -> String {
    let mut toml = common::ShardedVSchema::new(servers)
        .table("t", "workspace_id")
        .toml();
    for (i, s) in servers.iter().enumerate() {
        let n = i + 1;
        // Through the unix socket: a server that requires secure transport takes it.
        s.sql(&format!(
            "CREATE DATABASE IF NOT EXISTS app; CREATE DATABASE IF NOT EXISTS k{n}; \
             CREATE DATABASE IF NOT EXISTS main; \
             CREATE TABLE IF NOT EXISTS app.t (id INT PRIMARY KEY, workspace_id BIGINT, v TEXT)"
        ))
        .expect("create the databases");
        toml.push_str(&format!(
            "\n[keyspaces.k{n}]\ncluster = \"c{n}\"\ndatabase = \"k{n}\"\n"
        ));
    }
    toml
}

async fn start_proxy(toml: &str, tls: Option<BackendTls>, max_conns: usize) -> common::Proxy {
    let vs = VSchema::from_toml_str(toml)
        .expect("vschema")
        .with_backend_tls(tls.map(Arc::new));
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs,
    );
    config.migrations = None;
    config.pool.max_connections = max_conns;
    common::start_proxy_config(config).await
}

/// The first error a client sees logging in to `db` and running `sql` (the proxy may
/// open its backend connection at login or at the first statement).
async fn first_error(proxy: &common::Proxy, db: &str, sql: &str) -> (u16, String) {
    let opts = common::mysql_opts(&proxy.addr_string(), "app", "app", Some(db));
    match mysql_async::Conn::new(opts).await {
        Err(mysql_async::Error::Server(e)) => (e.code, e.message),
        Err(e) => panic!("expected a server error at login, got {e:?}"),
        Ok(mut conn) => common::server_error(&mut conn, sql).await,
    }
}

async fn cipher(conn: &mut mysql_async::Conn) -> String {
    conn.query_first::<String, _>(SSL_CIPHER)
        .await
        .expect("Ssl_cipher")
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_route_over_verified_tls_and_pooled_connections_keep_working() {
    let ca = TestCa::new("shardgate test CA");
    let names = ["127.0.0.1", "localhost"];
    let servers =
        common::start_servers_with(&[ca.server_opts(&names, true), ca.server_opts(&names, true)]);
    // The servers really refuse clear text: only TLS can explain what follows.
    let have_ssl = servers[0]
        .sql("SHOW VARIABLES LIKE 'have_ssl'")
        .expect("have_ssl");
    assert!(have_ssl.contains("YES"), "{have_ssl}");
    let plain = mysql_async::Conn::new(common::mysql_opts(
        &servers[0].addr(),
        "shardgate",
        "shardgate",
        None,
    ))
    .await;
    assert!(
        plain.is_err(),
        "a clear-text login must be refused by the server"
    );

    let toml = vschema_toml(&servers);
    let proxy = start_proxy(
        &toml,
        Some(ca.backend_tls(BackendTlsMode::VerifyIdentity)),
        1,
    )
    .await;

    // Rows route by workspace and come back (both shards are reached over TLS).
    let mut conn = proxy.connect("app", Some("app")).await;
    for ws in 1..=20u64 {
        conn.query_drop(format!(
            "INSERT INTO t (id, workspace_id, v) VALUES ({ws}, {ws}, 'row-{ws}')"
        ))
        .await
        .expect("insert over TLS");
    }
    for ws in 1..=20u64 {
        let v: Option<String> = conn
            .query_first(format!("SELECT v FROM t WHERE workspace_id = {ws}"))
            .await
            .expect("select over TLS");
        assert_eq!(v.as_deref(), Some(format!("row-{ws}").as_str()));
    }
    let spread: Vec<u64> = servers
        .iter()
        .map(|s| common::number_on(s, "SELECT COUNT(*) FROM app.t"))
        .collect();
    assert_eq!(spread.iter().sum::<u64>(), 20, "{spread:?}");
    assert!(
        spread.iter().all(|&n| n > 0),
        "both shards hold rows: {spread:?}"
    );
    drop(conn);

    // On each backend, the session shardgate runs statements on is encrypted.
    for n in 1..=servers.len() {
        let mut c = proxy.connect("app", Some(&format!("k{n}"))).await;
        let cipher = cipher(&mut c).await;
        assert!(!cipher.is_empty(), "c{n}: Ssl_cipher is empty");
    }

    // Pool reuse (max 1 connection per cluster): the next session gets the same
    // backend connection, still over TLS.
    let mut a = proxy.connect("app", Some("k1")).await;
    let thread: Option<u64> = a
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .expect("id");
    drop(a);
    let mut b = proxy.connect("app", Some("k1")).await;
    let again: Option<u64> = b
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .expect("id");
    assert_eq!(again, thread, "the pooled TLS connection is reused");

    // COM_RESET_CONNECTION over TLS drops session state.
    b.query_drop("CREATE TEMPORARY TABLE tmp (x INT)")
        .await
        .expect("temporary table");
    b.reset().await.expect("COM_RESET_CONNECTION");
    let (code, _) = common::server_error(&mut b, "SELECT * FROM tmp").await;
    assert_eq!(code, 1146, "the temporary table is gone after the reset");
    assert!(!cipher(&mut b).await.is_empty());

    // A row over 16 MiB both ways: split into several packets inside TLS records.
    b.query_drop("CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
        .await
        .expect("create big");
    let value: String = (0..(17 << 20) + 123)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    b.query_drop(format!("INSERT INTO big VALUES (1, '{value}')"))
        .await
        .expect("a 17 MiB statement through TLS");
    let back: Option<Vec<u8>> = b
        .query_first("SELECT b FROM big WHERE id = 1")
        .await
        .expect("a 17 MiB row through TLS");
    let back = back.expect("the row");
    assert_eq!(back.len(), value.len());
    assert!(
        back == value.as_bytes(),
        "the large row came back unchanged"
    );
    drop(b);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_do_not_verify_fail_the_connect_and_never_fall_back() {
    let ca = TestCa::new("shardgate test CA");
    // Clear text would be accepted by this server: a fallback would go unnoticed if
    // the proxy made one, so queries that fail here prove there is none.
    let servers = common::start_servers_with(&[ca.server_opts(&["db.example.invalid"], false)]);
    let toml = vschema_toml(&servers);

    // A CA that did not sign the server's certificate (in either mode).
    let other = TestCa::new("another CA");
    for mode in [BackendTlsMode::VerifyCa, BackendTlsMode::VerifyIdentity] {
        let proxy = start_proxy(&toml, Some(other.backend_tls(mode)), 4).await;
        let (code, message) = first_error(&proxy, "k1", "SELECT 1").await;
        assert_eq!(code, 1105, "{message}");
        assert!(message.contains("'c1'"), "names the cluster: {message}");
        assert!(message.contains("did not verify"), "{message}");
        assert!(message.contains("UnknownIssuer"), "{message}");
        proxy.stop().await;
    }

    // The right CA, but the certificate names another host: verify_identity refuses.
    let proxy = start_proxy(
        &toml,
        Some(ca.backend_tls(BackendTlsMode::VerifyIdentity)),
        4,
    )
    .await;
    let (code, message) = first_error(&proxy, "k1", "SELECT 1").await;
    assert_eq!(code, 1105, "{message}");
    assert!(message.contains("c1"), "{message}");
    assert!(message.contains("did not verify"), "{message}");
    assert!(message.contains("not valid for name"), "{message}");
    proxy.stop().await;

    // verify_ca accepts it (the chain is good). Loaded from a config file this time,
    // with paths relative to it.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("vschema.toml"), &toml).expect("vschema file");
    std::fs::create_dir(dir.path().join("certs")).expect("certs dir");
    std::fs::write(dir.path().join("certs/ca.pem"), ca.pem()).expect("ca file");
    let config_path = dir.path().join("shardgate.toml");
    std::fs::write(
        &config_path,
        "vschema = \"vschema.toml\"\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\n\
         [migrations]\nenabled = false\n\
         [backend_tls]\nmode = \"verify_ca\"\nca = \"certs/ca.pem\"\n",
    )
    .expect("config file");
    let config = ProxyConfig::load(&config_path).expect("the config loads");
    let tls = config.vschema.cluster("c1").and_then(|c| c.tls.as_ref());
    assert_eq!(tls.map(|t| t.mode), Some(BackendTlsMode::VerifyCa));
    let proxy = common::start_proxy_config(config).await;
    let mut conn = proxy.connect("app", Some("k1")).await;
    assert!(
        !cipher(&mut conn).await.is_empty(),
        "verify_ca runs over TLS"
    );
    drop(conn);
    proxy.stop().await;

    // A backend user that must present a client certificate (REQUIRE X509): refused
    // without one, served with one the server's ssl_ca signed.
    servers[0]
        .sql(
            "CREATE USER 'x509'@'%' IDENTIFIED BY 'x509' REQUIRE X509; \
             GRANT ALL PRIVILEGES ON *.* TO 'x509'@'%'",
        )
        .expect("create the X509 user");
    let x509_toml = toml.replace(
        "user = \"shardgate\"\npassword = \"shardgate\"",
        "user = \"x509\"\npassword = \"x509\"",
    );
    assert_ne!(x509_toml, toml);
    let proxy = start_proxy(
        &x509_toml,
        Some(ca.backend_tls(BackendTlsMode::VerifyCa)),
        4,
    )
    .await;
    let (code, message) = first_error(&proxy, "k1", "SELECT 1").await;
    assert_eq!(code, 1105, "{message}");
    assert!(message.contains("Access denied"), "{message}");
    proxy.stop().await;
    let (cert, key) = ca.leaf(&["shardgate"], ExtendedKeyUsagePurpose::ClientAuth);
    let with_cert = BackendTls::from_pem(
        ca.pem().as_bytes(),
        BackendTlsMode::VerifyCa,
        Some((cert.as_bytes(), key.as_bytes())),
    )
    .expect("backend TLS with a client certificate");
    let proxy = start_proxy(&x509_toml, Some(with_cert), 4).await;
    let mut conn = proxy.connect("app", Some("k1")).await;
    let user: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .expect("user");
    assert_eq!(user.as_deref(), Some("x509@%"));
    drop(conn);
    proxy.stop().await;

    // A half-configured client certificate is a config error.
    std::fs::write(
        &config_path,
        "vschema = \"vschema.toml\"\n[[users]]\nname = \"app\"\n\
         [backend_tls]\nca = \"certs/ca.pem\"\ncert = \"certs/ca.pem\"\n",
    )
    .expect("config file");
    let e = ProxyConfig::load(&config_path).expect_err("cert without key");
    assert!(
        e.contains("[backend_tls]") && e.contains("cert and key"),
        "{e}"
    );
    // So is a mode without a CA; `disabled` needs none and means plain TCP.
    let base = "vschema = \"vschema.toml\"\n[[users]]\nname = \"app\"\n[backend_tls]\n";
    std::fs::write(&config_path, format!("{base}mode = \"verify_ca\"\n")).expect("config");
    let e = ProxyConfig::load(&config_path).expect_err("no ca");
    assert!(e.contains("ca ("), "{e}");
    std::fs::write(&config_path, format!("{base}mode = \"disabled\"\n")).expect("config");
    let config = ProxyConfig::load(&config_path).expect("disabled loads");
    assert!(config.vschema.clusters.values().all(|c| c.tls.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_without_tls_is_refused_with_a_clear_error() {
    let servers = common::start_servers(1);
    let toml = vschema_toml(&servers);
    let ca = TestCa::new("shardgate test CA");
    let proxy = start_proxy(&toml, Some(ca.backend_tls(BackendTlsMode::VerifyCa)), 4).await;
    let (code, message) = first_error(&proxy, "k1", "SELECT 1").await;
    assert_eq!(code, 1105, "{message}");
    assert!(
        message.contains("cluster c1") && message.contains("does not offer TLS"),
        "{message}"
    );
    assert!(
        message.contains(&servers[0].addr()),
        "names the address: {message}"
    );
    proxy.stop().await;

    // Without [backend_tls] the same server serves as before.
    let proxy = start_proxy(&toml, None, 4).await;
    let mut conn = proxy.connect("app", Some("k1")).await;
    assert_eq!(cipher(&mut conn).await, "");
    drop(conn);
    proxy.stop().await;
}
