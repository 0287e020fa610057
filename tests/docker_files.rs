//! docker/: what can be checked without a container engine. The compose file parses
//! and everything it mounts is in the repository; the shardgate config and vschema it
//! mounts load and pass `shardgate vschema check`; the MariaDB services' init SQL runs
//! on a real MariaDB and the proxy serves its schema; Prometheus scrapes the port the
//! proxy serves `/metrics` on; every metric the Grafana dashboard queries is one a
//! running proxy exports (scraped from a real proxy in front of a real MariaDB), and
//! documented in docs/metrics.md.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use mysql_async::prelude::*;
use serde_json::Value;
use shardgate::config::ProxyConfig;

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

/// A YAML file as JSON, through python3's yaml module (scripts/ensure-deps installs
/// python3-yaml).
fn yaml(path: &Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3 runs (scripts/ensure-deps)");
    assert!(
        out.status.success(),
        "{} does not parse as YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python's JSON")
}

fn compose() -> Value {
    yaml(&docker_dir().join("compose.yaml"))
}

/// (service, host path relative to docker/, container path) of every bind mount.
fn bind_mounts(compose: &Value) -> Vec<(String, PathBuf, String)> {
    let services = compose["services"].as_object().expect("services");
    let mut out = Vec::new();
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let spec = v.as_str().expect("short volume syntax");
            let mut parts = spec.split(':');
            let (host, container) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                host.starts_with("./") || host.starts_with("../"),
                "{name}: {spec} is not a bind mount of a repository file"
            );
            out.push((name.clone(), PathBuf::from(host), container.to_string()));
        }
    }
    out
}

/// The proxy config the compose file mounts (`--config` of the shardgate service,
/// mapped back to its file under docker/).
fn mounted_proxy_config(compose: &Value) -> PathBuf {
    let svc = &compose["services"]["shardgate"];
    let args: Vec<&str> = svc["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let in_container = args[at + 1];
    for (service, host, container) in bind_mounts(compose) {
        if service != "shardgate" {
            continue;
        }
        if let Ok(rest) = Path::new(in_container).strip_prefix(&container) {
            return docker_dir().join(host).join(rest);
        }
    }
    panic!("{in_container} is not in a mount of the shardgate service")
}

#[test]
fn compose_file_parses_and_everything_it_mounts_is_in_the_repository() {
    let c = compose();
    let services: BTreeSet<&str> = c["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    for s in [
        "shardgate",
        "mariadb1",
        "mariadb2",
        "etcd",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains(s), "no service {s}: {services:?}");
    }
    for db in ["mariadb1", "mariadb2"] {
        assert_eq!(c["services"][db]["image"], "mariadb:10.11");
    }
    let mounts = bind_mounts(&c);
    assert!(mounts.len() >= 6, "{mounts:?}");
    for (service, host, _) in &mounts {
        let path = docker_dir().join(host);
        assert!(
            path.exists(),
            "{service} mounts {}, which is not in the repository",
            path.display()
        );
    }
    let build = &c["services"]["shardgate"]["build"];
    let context = docker_dir().join(build["context"].as_str().expect("context"));
    let dockerfile = context.join(build["dockerfile"].as_str().expect("dockerfile"));
    assert!(dockerfile.is_file(), "{}", dockerfile.display());
    let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
    assert!(text.contains("scripts/build-pgo --proxy-only"));
    assert!(text.contains("COPY --from=build /src/target/pgo/shardgate "));
    // The profile names functions by symbols that carry a hash of the compiler's
    // version, patch release included: the image must build with exactly the release
    // it was recorded with.
    let recorded =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pgo/recorded"))
            .expect("bench/pgo/recorded");
    let rustc = recorded
        .lines()
        .find_map(|l| l.strip_prefix("rustc "))
        .expect("bench/pgo/recorded names its rustc");
    assert!(
        text.contains(&format!("FROM rust:{rustc}-bookworm AS build")),
        "the build stage's Rust is not {rustc}, the release the profile was recorded with"
    );
    assert!(text.contains("FROM debian:bookworm-slim"));
    assert!(
        text.contains("\nUSER "),
        "the runtime runs as a non-root user"
    );
}

#[test]
fn mounted_config_and_vschema_load_and_pass_vschema_check() {
    let c = compose();
    let config_path = mounted_proxy_config(&c);
    let config = ProxyConfig::load(&config_path)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", config_path.display()));
    assert_eq!(config.vschema.clusters.len(), 2, "two MariaDB clusters");
    // Every TOML file the shardgate service mounts that is a shard map passes the
    // command operators run.
    let mut checked = 0;
    for (service, host, _) in bind_mounts(&c) {
        if service != "shardgate" {
            continue;
        }
        let path = docker_dir().join(host);
        let files: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("dir")
                .map(|e| e.expect("entry").path())
                .collect()
        } else {
            vec![path]
        };
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "toml"))
        {
            let text = std::fs::read_to_string(f).expect("read");
            if !text.contains("[clusters.") {
                continue;
            }
            let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
                .args(["vschema", "check"])
                .arg(f)
                .output()
                .expect("run shardgate");
            assert!(
                out.status.success(),
                "shardgate vschema check {}: {}{}",
                f.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 1, "the vschema the config names");
    // Each cluster's host is a MariaDB service of the compose file.
    for cluster in config.vschema.clusters.values() {
        let host = cluster.primary.split(':').next().unwrap_or("");
        assert_eq!(
            c["services"][host]["image"], "mariadb:10.11",
            "cluster {} points at {host}",
            cluster.name
        );
    }
}

#[test]
fn prometheus_scrapes_the_port_the_proxy_serves_metrics_on() {
    let c = compose();
    let config = ProxyConfig::load(&mounted_proxy_config(&c)).expect("config");
    let metrics_port = config.metrics_listen.expect("metrics_listen").port();
    let prom_mount = bind_mounts(&c)
        .into_iter()
        .find(|(s, _, container)| s == "prometheus" && container.ends_with("prometheus.yml"))
        .expect("prometheus.yml mounted");
    let prom = yaml(&docker_dir().join(prom_mount.1));
    let targets: Vec<&str> = prom["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .flat_map(|s| s["static_configs"].as_array().into_iter().flatten())
        .flat_map(|s| s["targets"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(targets, [format!("shardgate:{metrics_port}")]);
    let exposed = std::fs::read_to_string(docker_dir().join("Dockerfile")).expect("Dockerfile");
    let expose = exposed
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE");
    for port in [metrics_port, config.listen.port()] {
        assert!(
            expose.split_whitespace().any(|p| p == port.to_string()),
            "{expose} lacks {port}"
        );
    }
}

/// Every metric name in the dashboard's queries (expressions and variable queries).
fn dashboard_metric_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition" | "query", Value::String(q)) => names_in(q, out),
                    _ => dashboard_metric_names(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_metric_names(x, out)),
        _ => {}
    }
}

fn names_in(q: &str, out: &mut BTreeSet<String>) {
    let mut rest = q;
    while let Some(at) = rest.find("shardgate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
}

/// The series names of a `/metrics` body (histograms as `_bucket`, `_sum`, `_count`).
fn exported_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| l.starts_with("shardgate_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_metrics_a_running_proxy_exports_and_docs_name() {
    let text =
        std::fs::read_to_string(docker_dir().join("grafana/shardgate.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 10));
    let mut wanted = BTreeSet::new();
    dashboard_metric_names(&dashboard, &mut wanted);

    // The MariaDB services' init SQL, on a real MariaDB 10.11: the proxy below serves
    // its schema.
    let init = bind_mounts(&compose())
        .into_iter()
        .find(|(s, _, container)| s == "mariadb1" && container.ends_with(".sql"))
        .expect("mariadb1 mounts its init SQL");
    let init = std::fs::read_to_string(docker_dir().join(init.1)).expect("init SQL");
    let servers = common::start_servers(1);
    servers[0].sql(&init).expect("the init SQL runs");
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n[keyspaces.app]\ncluster = \"c1\"\n",
        servers[0].addr()
    );
    let metrics_addr = common::free_local_addr();
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        shardgate::vschema::VSchema::from_toml_str(&toml).expect("vschema"),
    );
    config.metrics_listen = Some(metrics_addr);
    let proxy = common::start_proxy_config(config).await;
    let mut c = proxy.connect("app", Some("app")).await;
    c.query_drop("INSERT INTO messages (workspace_id, body) VALUES (42, 'hello')")
        .await
        .expect("insert into the sample schema");
    let n: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM messages WHERE workspace_id = 42")
        .await
        .expect("query");
    assert_eq!(n, Some(1));
    let (code, _) = common::server_error(&mut c, "SELECT * FROM no_such_table").await;
    assert_eq!(code, 1146);
    // The migration executors publish their counters once they have polled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let body = loop {
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            common::http_get(metrics_addr, "/metrics"),
        )
        .await
        .expect("/metrics answers");
        if body.contains("shardgate_migrations_rows_copied_total{") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no migration metrics:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    drop(c);
    proxy.stop().await;

    let exported = exported_names(&body);
    let missing: Vec<_> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not export:\n{body}"
    );
    for needed in [
        "shardgate_statements_total",
        "shardgate_statement_errors_total",
        "shardgate_statement_duration_seconds_bucket",
        "shardgate_pool_connections",
        "shardgate_cluster_health",
        "shardgate_cluster_intent",
        "shardgate_cluster_buffered",
        "shardgate_migrations_queue_depth",
        "shardgate_vschema_version",
    ] {
        assert!(wanted.contains(needed), "the dashboard has no {needed}");
    }
    // docs/metrics.md names every metric the proxy exports.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .expect("docs/metrics.md");
    for name in &exported {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| body.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(name);
        assert!(
            docs.contains(&format!("`{family}")),
            "docs/metrics.md does not document {family}"
        );
    }
}
