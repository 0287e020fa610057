//! The `shardgate` command: `serve`, `demo`, `vschema check`.
//!
//! Arguments are parsed by clap: a wrong argument exits with code 2 and says which;
//! a failure while running exits with code 1.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use shardgate::config::{ProxyConfig, User};
use shardgate::demo::DemoOptions;
use shardgate::vschema::VSchema;
use shardgate::workers::{RuntimeKind, Workers};

/// A MySQL-protocol proxy that routes each query to the cluster owning its workspace.
#[derive(Debug, Parser)]
#[command(
    name = "shardgate",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = "Logs go to stderr; RUST_LOG=shardgate=debug for more.\n\
                  SHARDGATE_RUNTIME=workers|multi-thread|current-thread picks how sessions run\n\
                  (default workers: one single-threaded runtime per thread), SHARDGATE_THREADS=N\n\
                  their threads (default: the cores; 0 = everything on one thread)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve MySQL clients, from a config file or from a shard map and users.
    ///
    /// Either `--config FILE` (see docs/configuration.md), or `--vschema FILE` with at
    /// least one `--user`.
    Serve(ServeArgs),
    /// Local MariaDB clusters with sample data behind the proxy, until Ctrl-C.
    Demo(DemoArgs),
    /// Shard-map (vschema) tools.
    #[command(subcommand)]
    Vschema(VschemaCommand),
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("source")
        .required(true)
        .args(["config", "vschema"])
))]
struct ServeArgs {
    /// The proxy's config file: listen address, users, pools, vschema path.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["vschema", "listen", "users", "tls_cert", "tls_key"])]
    config: Option<PathBuf>,
    /// The shard map to serve, without a config file.
    #[arg(long, value_name = "FILE", requires = "users")]
    vschema: Option<PathBuf>,
    /// Address for MySQL clients (with --vschema).
    #[arg(long, value_name = "ADDR", default_value = shardgate::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// A user clients log in as (with --vschema); repeat for more. A trailing role,
    /// `:dba` (migration statements) or `:admin` (everything), raises it above `app`;
    /// a trailing `:caching_sha2_password` (before or after it) makes the user log in
    /// with that plugin instead of mysql_native_password. Keyspace lists and workspace
    /// bindings need a config file.
    #[arg(
        long = "user",
        value_name = "NAME:PASSWORD[:dba|:admin][:caching_sha2_password]",
        value_parser = parse_user
    )]
    users: Vec<User>,
    /// TLS for clients (with --vschema): the certificate chain, PEM. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS for clients (with --vschema): the certificate's private key, PEM.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Address the proxy listens on for MySQL clients.
    #[arg(long, value_name = "ADDR", default_value_t = DemoOptions::default().listen)]
    listen: SocketAddr,
    /// Number of sample workspaces (ids 1..=N).
    #[arg(long, value_name = "N", default_value_t = DemoOptions::default().workspaces)]
    workspaces: u64,
    /// Port of the first cluster's MariaDB server; the others take the next ports.
    #[arg(long, value_name = "PORT", default_value_t = DemoOptions::default().base_port)]
    base_port: u16,
    /// A shard map to use instead of the built-in vschema/demo.toml; its clusters are
    /// started locally whatever their `primary` says.
    #[arg(long, value_name = "FILE")]
    vschema: Option<PathBuf>,
    /// Standbys per cluster, replicating from its primary (semi-sync, GTID,
    /// read_only), on the ports after the primaries'.
    #[arg(long, value_name = "N", default_value_t = DemoOptions::default().standbys)]
    standbys: usize,
}

#[derive(Debug, Subcommand)]
enum VschemaCommand {
    /// Validate a shard map; print every error, or where everything lives.
    Check {
        /// The vschema TOML file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `NAME:PASSWORD`, optionally followed by a role (`:dba`, `:admin`) and/or an auth plugin suffix
/// (`:caching_sha2_password`, `:mysql_native_password`), in either order. The password
/// is everything between the first colon and those suffixes, so it may contain colons
/// itself.
fn parse_user(spec: &str) -> Result<User, String> {
    use shardgate::access::Role;
    use shardgate::protocol::auth::AuthPlugin;
    let mut rest = spec;
    let mut role = None;
    let mut plugin = None;
    while let Some((head, last)) = rest.rsplit_once(':') {
        // A suffix only if a `NAME:PASSWORD` is left before it.
        if !head.contains(':') {
            break;
        }
        match (Role::parse(last), AuthPlugin::from_name(last)) {
            (Some(r), _) if role.is_none() && r != Role::App => role = Some(r),
            (_, Some(p)) if plugin.is_none() => plugin = Some(p),
            _ => break,
        }
        rest = head;
    }
    match rest.split_once(':') {
        Some((name, password)) if !name.is_empty() => {
            let mut user = User::new(name, password, false);
            user.role = role.unwrap_or(Role::App);
            user.auth_plugin = plugin.unwrap_or_default();
            Ok(user)
        }
        _ => Err("expected NAME:PASSWORD[:dba|:admin][:caching_sha2_password]".to_string()),
    }
}

fn main() -> ExitCode {
    // Exits with code 2 and clap's message on a wrong argument, 0 after --help.
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("shardgate=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Demo(args) => demo(args),
        Command::Vschema(VschemaCommand::Check { file }) => vschema_check(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("shardgate: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime of `demo` and of `serve`'s main loop: tokio's multi-thread
/// runtime with `SHARDGATE_THREADS` threads (default: the cores), or, with
/// `SHARDGATE_THREADS=0` or `SHARDGATE_RUNTIME=current-thread`, one thread.
fn runtime(kind: RuntimeKind) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = match kind {
        RuntimeKind::MultiThread(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        // With session workers the main runtime only accepts and runs the monitors,
        // the control plane and the executors.
        RuntimeKind::Workers(_) | RuntimeKind::CurrentThread => {
            tokio::runtime::Builder::new_current_thread()
        }
    };
    builder.enable_all().build().map_err(|e| e.to_string())
}

fn vschema_check(file: &std::path::Path) -> Result<(), String> {
    let vs = VSchema::load(file).map_err(|e| format!("{} is not valid:\n{e}", file.display()))?;
    println!("{}: ok\n{}", file.display(), vs.describe());
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = match (args.config, args.vschema) {
        (Some(file), _) => ProxyConfig::load(&file)?,
        (None, Some(vfile)) => {
            let vs = VSchema::load(&vfile).map_err(|e| format!("{}:\n{e}", vfile.display()))?;
            let mut config = ProxyConfig::new(args.listen, args.users, vs);
            if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
                config.tls = Some(shardgate::protocol::tls::ServerTls::from_pem_files(
                    cert, key, false,
                )?);
            }
            config
        }
        // clap requires one of the two.
        (None, None) => return Err("serve needs --config or --vschema".to_string()),
    };
    let kind = RuntimeKind::from_env()?;
    let rt = runtime(kind)?;
    let workers = match kind {
        RuntimeKind::Workers(n) => {
            Some(Workers::start(n).map_err(|e| format!("starting {n} session workers: {e}"))?)
        }
        _ => None,
    };
    let on = workers.as_ref();
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", config.listen))?;
        if std::io::stderr().is_terminal() {
            eprintln!("shardgate listening on {}", config.listen);
        }
        shardgate::server::serve_on(Arc::new(config), listener, shutdown_signal(), on)
            .await
            .map_err(|e| e.to_string())
    });
    // The workers stop (and their threads are joined) outside the main runtime.
    drop(workers);
    served
}

fn demo(args: DemoArgs) -> Result<(), String> {
    let opts = DemoOptions {
        listen: args.listen,
        base_port: args.base_port,
        workspaces: args.workspaces,
        vschema_path: args.vschema,
        standbys: args.standbys,
    };
    let kind = match RuntimeKind::from_env()? {
        RuntimeKind::Workers(n) => RuntimeKind::MultiThread(n),
        other => other,
    };
    runtime(kind)?.block_on(shardgate::demo::run(opts))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn user_specs_parse_with_role_suffix_and_colons_in_passwords() {
        let user = parse_user("app:app").expect("plain user");
        assert_eq!(
            (user.name.as_str(), user.role),
            ("app", shardgate::access::Role::App)
        );
        let admin = parse_user("root:s3:cret:admin").expect("admin user");
        assert_eq!(admin.name, "root");
        assert_eq!(admin.password, "s3:cret");
        assert!(admin.role.is_admin());
        let dba = parse_user("ops:pw:dba").expect("dba user");
        assert_eq!(
            (dba.password.as_str(), dba.role),
            ("pw", shardgate::access::Role::Dba)
        );
        let colon = parse_user("u:a:b").expect("a colon in the password");
        assert_eq!(
            (colon.password.as_str(), colon.role),
            ("a:b", shardgate::access::Role::App)
        );
        assert!(parse_user("nopassword").is_err());
        // Plugin suffixes, in either order with :admin; the default is native.
        use shardgate::protocol::auth::AuthPlugin;
        assert_eq!(user.auth_plugin, AuthPlugin::NativePassword);
        for spec in [
            "u:p:w:caching_sha2_password:admin",
            "u:p:w:admin:caching_sha2_password",
        ] {
            let u = parse_user(spec).expect(spec);
            assert_eq!((u.name.as_str(), u.password.as_str()), ("u", "p:w"));
            assert!(u.role.is_admin());
            assert_eq!(u.auth_plugin, AuthPlugin::CachingSha2Password);
        }
        let u = parse_user("u:pw:mysql_native_password").expect("native");
        assert_eq!((u.password.as_str(), u.role.is_admin()), ("pw", false));
        assert_eq!(u.auth_plugin, AuthPlugin::NativePassword);
        // A password that is only a plugin name stays a password.
        let u = parse_user("u:caching_sha2_password").expect("password");
        assert_eq!(u.password, "caching_sha2_password");
        assert_eq!(u.auth_plugin, AuthPlugin::NativePassword);
        assert!(parse_user(":pw").is_err());
    }
}
