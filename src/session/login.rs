//! Login: the greeting, the client's handshake response, authentication, and the
//! database it asks for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::ConnKey;
use crate::error::ProxyError;
use crate::frontdoor::LogSafe;
use crate::protocol::auth::{self, AuthPlugin, NATIVE_PASSWORD};
use crate::protocol::handshake::{self, Greeting};
use crate::protocol::packet::{PacketConn, ReadError};
use crate::protocol::tls::{self, ClientStream};
use crate::protocol::wire::{self, OkInfo};
use crate::protocol::{caps, status};
use crate::router::{self, DbContext, Dispatch};
use crate::shared::Shared;
use crate::vschema::VSchema;

use super::sha2_login::{self, Verdict};

/// What a successful login established.
pub(super) struct Login {
    pub user: String,
    pub role: crate::access::Role,
    pub scope: Arc<crate::access::Scope>,
    pub ddl_wait: Option<Duration>,
    pub capabilities: u32,
    pub ext_capabilities: u32,
    pub collation: u8,
    pub ctx: DbContext,
    /// The login named `db@replica`: reads go to a standby.
    pub replica_reads: bool,
    /// The nonce the client authenticated over (`COM_CHANGE_USER` answers over it
    /// too, as MariaDB's clients compute it).
    pub scramble: [u8; 20],
    /// The session's client slot (taken once authenticated).
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The session's place in its user's `max_connections`, if it has one.
    pub user_slot: Option<crate::frontdoor::UserSlot>,
}

pub(super) async fn login(
    shared: &Arc<Shared>,
    client: &mut PacketConn<ClientStream>,
    id: u32,
    peer: SocketAddr,
) -> Option<Login> {
    let started = tokio::time::Instant::now();
    let scramble = auth::new_scramble();
    let local_files = if shared.config.local_infile {
        caps::LOCAL_FILES
    } else {
        0
    };
    let greeting = Greeting {
        server_version: shared.server_version.clone(),
        connection_id: id,
        scramble: scramble.to_vec(),
        // SSL only when there is a certificate to offer.
        capabilities: shared.offered_capabilities
            | local_files
            | shared.config.tls.as_ref().map_or(0, |_| caps::SSL),
        collation: shared.default_collation,
        status: status::AUTOCOMMIT,
        auth_plugin: shared.greeting_plugin.name().to_string(),
        ext_capabilities: shared.offered_ext_capabilities,
    };
    client
        .send(0, &handshake::build_greeting(&greeting))
        .await
        .ok()?;
    let (seq, payload) = match client.read_packet(64 * 1024).await {
        Ok(p) => p,
        Err(ReadError::TooLarge(_)) => {
            let _ = client
                .send(2, &wire::proxy_err_payload(&ProxyError::bad_handshake()))
                .await;
            return None;
        }
        Err(_) => return None,
    };
    let seq = seq.wrapping_add(1);
    let (mut seq, payload) = match (handshake::is_ssl_request(&payload), &shared.config.tls) {
        (true, None) => {
            let e = ProxyError::not_supported("TLS connections");
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
        (true, Some(tls)) => {
            if let Err(e) = tls::start_tls(tls, client).await {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return None;
            }
            // The real handshake response, over TLS; its sequence id goes on.
            match client.read_packet(64 * 1024).await {
                Ok((s, p)) => (s.wrapping_add(1), p),
                Err(ReadError::TooLarge(_)) => {
                    let _ = client
                        .send(
                            seq.wrapping_add(1),
                            &wire::proxy_err_payload(&ProxyError::bad_handshake()),
                        )
                        .await;
                    return None;
                }
                Err(_) => return None,
            }
        }
        (false, Some(tls)) if tls.require => {
            tracing::info!(%peer, "refused: no TLS");
            let e = ProxyError::insecure_transport(None);
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
        (false, _) => (seq, payload),
    };
    let Some(resp) = handshake::parse_handshake_response(&payload) else {
        let _ = client
            .send(seq, &wire::proxy_err_payload(&ProxyError::bad_handshake()))
            .await;
        return None;
    };
    let entry = shared.users.get(&resp.user);
    // A client without CLIENT_PLUGIN_AUTH answered for mysql_native_password.
    let client_plugin = resp.auth_plugin.as_deref().unwrap_or(NATIVE_PASSWORD);
    // The user's plugin. For a name nobody has, the greeting's: the exchange is then
    // the one of every user with that plugin (most users, or all), so it does not
    // tell unknown names apart from them.
    let plugin = entry.map_or(shared.greeting_plugin, |u| u.auth_plugin);
    let mut token = resp.auth_response.clone();
    let mut scramble = scramble;
    if client_plugin != plugin.name() {
        if resp.capabilities & caps::PLUGIN_AUTH == 0 {
            // It could not follow an auth switch.
            let e = ProxyError::auth_mode_not_supported();
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
        // The client computed its answer for another plugin: ask again in the user's,
        // with a fresh nonce, as MySQL does.
        scramble = auth::new_scramble();
        let switch = handshake::build_auth_switch(plugin.name(), &scramble);
        client.send(seq, &switch).await.ok()?;
        match sha2_login::read_auth_packet(client, &mut seq).await {
            Ok(reply) => token = reply.to_vec(),
            Err(Verdict::Malformed) => {
                let _ = client
                    .send(seq, &wire::proxy_err_payload(&ProxyError::bad_handshake()))
                    .await;
                return None;
            }
            Err(_) => return None,
        }
    }
    let host = peer.ip().to_string();
    let door = &shared.door;
    // Throttled: every attempt waits, right or wrong, so its timing tells nothing. The
    // wait comes before any answer that depends on the password (caching_sha2's fast
    // path answers at once).
    crate::timer::sleep(door.login_delay(peer.ip(), &resp.user, started)).await;
    let verdict = match plugin {
        AuthPlugin::NativePassword => sha2_login::native_verdict(entry, &token, &scramble),
        AuthPlugin::CachingSha2Password => {
            sha2_login::authenticate(
                shared, client, &mut seq, &resp.user, entry, &token, &scramble,
            )
            .await
        }
    };
    match verdict {
        Verdict::Ok => {}
        Verdict::Denied { using_password } => {
            tracing::info!(user = %LogSafe(&resp.user), %peer, "access denied");
            let now = tokio::time::Instant::now();
            crate::frontdoor::log_notices(door.throttle.record_failure(peer.ip(), &resp.user, now));
            let e = ProxyError::access_denied(&resp.user, &host, using_password);
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
        Verdict::Malformed => {
            let _ = client
                .send(seq, &wire::proxy_err_payload(&ProxyError::bad_handshake()))
                .await;
            return None;
        }
        Verdict::Gone => return None,
    }
    door.throttle.record_success(peer.ip(), &resp.user);
    let capabilities = resp.capabilities & (caps::SERVER_OFFERED | local_files);
    if entry.is_some_and(|u| u.require_tls) && !client.io.is_tls() {
        tracing::info!(user = %LogSafe(&resp.user), %peer, "refused: user requires TLS");
        let e = ProxyError::insecure_transport(Some(&resp.user));
        let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
        return None;
    }
    let Some(slot) = door.client_slot() else {
        let e = ProxyError::too_many_connections();
        let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
        return None;
    };
    let user_slot = match door.user_slot(&resp.user, max_connections(shared, &resp.user)) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(user = %LogSafe(&resp.user), %peer, "refused: max_connections");
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
    };
    let ext_capabilities = resp.ext_capabilities & shared.offered_ext_capabilities;
    let vs = shared.vschema();
    // `app@replica`: keyspace `app`, reads from a standby.
    let (login_db, replica_reads) = match resp.database.as_deref() {
        Some(db) => match super::replica_suffix(db) {
            Some(base) => (Some(base), true),
            None => (Some(db), false),
        },
        None => (None, false),
    };
    let ctx = match login_db {
        None => DbContext::None,
        Some(db) => match resolve_database(&vs, db) {
            Some(ctx) => ctx,
            None => {
                let e = ProxyError::unknown_database(db);
                let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
                return None;
            }
        },
    };
    let entry = shared.users.get(&resp.user);
    if let Some(db) = login_db {
        if entry.is_some_and(|u| !u.scope.allows_database(&vs, db)) {
            tracing::info!(user = %LogSafe(&resp.user), %peer, database = %LogSafe(db), "refused: database outside the user's scope");
            let e = ProxyError::db_access_denied(&resp.user, db);
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
    }
    if let DbContext::PassThrough(db) | DbContext::Workspace { database: db, .. } = &ctx {
        // Only its cluster knows whether a pass-through or workspace database exists; a
        // direct server refuses the login when it does not, and so do we.
        let key = ConnKey {
            caps: capabilities & caps::RELAY_SENSITIVE,
            collation: resp.collation,
            ext: ext_capabilities,
        };
        if let Err(e) = check_passthrough(shared, &vs, &ctx, key, db).await {
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
    }
    let ok = wire::ok_payload(&OkInfo {
        status: status::AUTOCOMMIT,
        ..OkInfo::default()
    });
    client.send(seq, &ok).await.ok()?;
    if resp.capabilities & caps::COMPRESS != 0 {
        // As MariaDB does: the login was uncompressed, the first command is not.
        let codec = crate::protocol::compress::Codec::new(
            shared.config.max_packet_size,
            shared.config.limits.packet_stall_timeout,
        );
        let early = client.rbuf.split();
        client.io.start(codec, &early).ok()?;
    }
    Some(Login {
        role: entry.map_or(crate::access::Role::App, |u| u.role),
        scope: entry.map_or_else(Default::default, |u| u.scope.clone()),
        ddl_wait: entry.and_then(|u| u.ddl_wait),
        user: resp.user,
        capabilities,
        ext_capabilities,
        collation: resp.collation,
        ctx,
        replica_reads,
        scramble,
        slot: Some(slot),
        user_slot,
    })
}

/// Checks that a pass-through database exists on the default cluster.
pub(super) async fn check_passthrough(
    shared: &Arc<Shared>,
    vs: &VSchema,
    ctx: &DbContext,
    key: ConnKey,
    db: &str,
) -> Result<(), ProxyError> {
    let Dispatch::Single(target) = router::route(vs, ctx, &super::any_statement())? else {
        return Err(ProxyError::internal("bad pass-through route"));
    };
    let pool = shared
        .runtime()
        .pool(&target.cluster)
        .cloned()
        .ok_or_else(|| ProxyError::internal("no pool for the default cluster"))?;
    let mut lease = pool
        .checkout(crate::backend::Wanted::plain(key, Some(db)))
        .await?;
    let conn = lease.conn();
    if conn.database.as_deref() != Some(db) {
        match conn.init_db(db).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ProxyError::unknown_database(db)),
            Err(e) => return Err(ProxyError::lost_backend(&target.cluster, e)),
        }
    }
    Ok(())
}

/// What a database name means in the vschema, without asking a backend.
pub(super) fn resolve_database(vs: &VSchema, db: &str) -> Option<DbContext> {
    if vs.keyspace(db).is_some() {
        Some(DbContext::Keyspace(db.to_string()))
    } else if let Some((ks, workspace)) = vs.workspace_database(db) {
        Some(DbContext::Workspace {
            keyspace: ks.name.clone(),
            workspace,
            database: db.to_string(),
        })
    } else if vs.default_keyspace.is_some() {
        Some(DbContext::PassThrough(db.to_string()))
    } else {
        None
    }
}

/// User `name`'s `max_connections`, if it has one (login and `COM_CHANGE_USER`).
pub(super) fn max_connections(shared: &Shared, name: &str) -> Option<usize> {
    shared
        .config
        .users
        .iter()
        .find(|u| u.name == name)
        .and_then(|u| u.max_connections)
}
