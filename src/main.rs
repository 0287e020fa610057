//! The `shardgate` command: `serve`, `demo`, `vschema check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use shardgate::config::{ProxyConfig, User};
use shardgate::vschema::VSchema;

const USAGE: &str = "\
shardgate: a MySQL-protocol proxy that routes each query to the cluster owning its workspace

usage:
  shardgate serve --config FILE          serve with a config file (see docs/configuration.md)
  shardgate serve --vschema FILE [--listen ADDR] --user NAME:PASSWORD[:admin] ...
  shardgate demo [--listen ADDR] [--workspaces N] [--base-port PORT]
                                         local MariaDB clusters + the proxy + sample data
  shardgate vschema check FILE           validate a shard map and print its placement
  shardgate --version

logging: RUST_LOG=shardgate=debug";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("shardgate=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("shardgate: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime. `SHARDGATE_THREADS=N` sets the worker threads (default 2);
/// `SHARDGATE_THREADS=0` runs everything on the main thread (tokio's current-thread
/// runtime: no cross-thread wake-ups, one core).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let threads = std::env::var("SHARDGATE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(2);
    let mut builder = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build().map_err(|e| e.to_string())
}

fn run(args: &[String]) -> Result<(), String> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        [] | ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        ["--version"] | ["-V"] => {
            println!("shardgate {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        ["vschema", "check", file] => {
            let vs = VSchema::load(&PathBuf::from(file))
                .map_err(|e| format!("{file} is not valid:\n{e}"))?;
            println!("{file}: ok\n{}", vs.describe());
            Ok(())
        }
        ["serve", rest @ ..] => serve(rest),
        ["demo", rest @ ..] => demo(rest),
        _ => Err(format!(
            "unknown command; see `shardgate --help`\n\n{USAGE}"
        )),
    }
}

fn flag<'a>(rest: &'a [&'a str], name: &str) -> Result<Option<&'a str>, String> {
    match rest.iter().position(|a| *a == name) {
        None => Ok(None),
        Some(i) => rest
            .get(i + 1)
            .copied()
            .map(Some)
            .ok_or_else(|| format!("{name} needs a value")),
    }
}

fn check_flags(rest: &[&str], known: &[&str]) -> Result<(), String> {
    let mut i = 0;
    while i < rest.len() {
        if !known.contains(&rest[i]) {
            return Err(format!(
                "unknown argument {:?}; see `shardgate --help`",
                rest[i]
            ));
        }
        i += 2;
    }
    Ok(())
}

fn serve(rest: &[&str]) -> Result<(), String> {
    check_flags(rest, &["--config", "--vschema", "--listen", "--user"])?;
    let config = if let Some(file) = flag(rest, "--config")? {
        ProxyConfig::load(&PathBuf::from(file))?
    } else {
        let vfile = flag(rest, "--vschema")?.ok_or("serve needs --config or --vschema")?;
        let vs = VSchema::load(&PathBuf::from(vfile)).map_err(|e| format!("{vfile}:\n{e}"))?;
        let listen = flag(rest, "--listen")?
            .unwrap_or(shardgate::config::DEFAULT_LISTEN)
            .parse()
            .map_err(|e| format!("--listen: {e}"))?;
        let mut users = Vec::new();
        for (i, a) in rest.iter().enumerate() {
            if *a == "--user" {
                let spec = rest.get(i + 1).ok_or("--user needs NAME:PASSWORD")?;
                let mut parts = spec.splitn(3, ':');
                let name = parts.next().unwrap_or_default().to_string();
                let password = parts
                    .next()
                    .ok_or("--user needs NAME:PASSWORD")?
                    .to_string();
                let admin = parts.next() == Some("admin");
                users.push(User::new(&name, &password, admin));
            }
        }
        if users.is_empty() {
            return Err("serve needs at least one --user NAME:PASSWORD".into());
        }
        ProxyConfig::new(listen, users, vs)
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", config.listen))?;
        println!("shardgate listening on {}", config.listen);
        shardgate::server::serve(Arc::new(config), listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

fn demo(rest: &[&str]) -> Result<(), String> {
    check_flags(
        rest,
        &["--listen", "--workspaces", "--base-port", "--vschema"],
    )?;
    let mut opts = shardgate::demo::DemoOptions::default();
    if let Some(l) = flag(rest, "--listen")? {
        opts.listen = l.parse().map_err(|e| format!("--listen: {e}"))?;
    }
    if let Some(n) = flag(rest, "--workspaces")? {
        opts.workspaces = n.parse().map_err(|e| format!("--workspaces: {e}"))?;
    }
    if let Some(p) = flag(rest, "--base-port")? {
        opts.base_port = p.parse().map_err(|e| format!("--base-port: {e}"))?;
    }
    if let Some(v) = flag(rest, "--vschema")? {
        opts.vschema_path = Some(PathBuf::from(v));
    }
    runtime()?.block_on(shardgate::demo::run(opts))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
