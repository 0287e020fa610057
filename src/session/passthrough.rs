//! Behaving as MariaDB does where a session's state changes outside a plain statement:
//! the implicit commit before a schema change, `COM_RESET_CONNECTION`,
//! `COM_CHANGE_USER` and `COM_SET_OPTION`.
//!
//! - **Implicit commit.** MariaDB commits an open transaction before DDL (even when the
//!   DDL then fails). A DDL that runs on the transaction's own backend connection gets
//!   that from the backend itself (so a DDL MariaDB's parser rejects commits nothing,
//!   as directly); any other DDL (queued, or for another cluster) is preceded by a
//!   `COMMIT` on the transaction's connection. A `BEGIN` that never reached a backend
//!   is dropped.
//! - **Reset.** [`Session::reset_session_state`] is what both `COM_RESET_CONNECTION`
//!   and `COM_CHANGE_USER` do to the session: every backend connection it holds is
//!   reset (temporary tables, locks, user variables, prepared statements, transaction
//!   rolled back) and the session's replayed settings start over.
//! - **Change user.** As on MariaDB the session is reset first, then the new user
//!   authenticates; a wrong password gets `1045` and the session goes on, reset, as the
//!   old user in its old database.

use crate::error::ProxyError;
use crate::frontdoor::LogSafe;
use crate::planner::{Effects, StatementPlan};
use crate::protocol::auth::{self, AuthPlugin};
use crate::protocol::handshake;
use crate::protocol::relay::ResponseKind;
use crate::protocol::wire::{self, OkInfo};
use crate::protocol::{caps, command, status};
use crate::router::{self, DbContext};
use crate::shared::Runtime;

use super::sha2_login::{self, Verdict};
use super::state::DdlSettings;
use super::{Answered, Session};

/// `COM_CHANGE_USER`'s fields (connect attributes, if any, are skipped).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ChangeUser {
    pub user: String,
    pub auth_response: Vec<u8>,
    /// None or empty: no database.
    pub database: Option<String>,
    /// The connection collation asked for, if the packet carries one.
    pub collation: Option<u16>,
    /// The plugin the client computed `auth_response` for.
    pub auth_plugin: Option<String>,
}

/// Reads a `COM_CHANGE_USER` payload (command byte included) sent by a client with
/// `capabilities`. None when it is malformed.
pub(super) fn parse_change_user(payload: &[u8], capabilities: u32) -> Option<ChangeUser> {
    let mut rest = payload.get(1..)?;
    let user = take_nul(&mut rest)?;
    let auth_response = if capabilities & caps::SECURE_CONNECTION != 0 {
        let (&len, tail) = rest.split_first()?;
        let token = tail.get(..usize::from(len))?.to_vec();
        rest = &tail[usize::from(len)..];
        token
    } else {
        take_nul(&mut rest)?.to_vec()
    };
    let database = take_nul(&mut rest)?;
    let mut collation = None;
    let mut auth_plugin = None;
    if rest.len() >= 2 {
        collation = Some(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if capabilities & caps::PLUGIN_AUTH != 0 && !rest.is_empty() {
            auth_plugin = Some(String::from_utf8_lossy(take_nul(&mut rest)?).into_owned());
        }
    }
    // What follows (connect attributes) is not needed: it is never read.
    Some(ChangeUser {
        user: String::from_utf8_lossy(user).into_owned(),
        auth_response,
        database: (!database.is_empty()).then(|| String::from_utf8_lossy(database).into_owned()),
        collation,
        auth_plugin,
    })
}

/// The bytes up to the next NUL (which is consumed); None without a NUL.
fn take_nul<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = rest.iter().position(|&b| b == 0)?;
    let s = &rest[..end];
    *rest = &rest[end + 1..];
    Some(s)
}

impl Session {
    /// Before a schema change: commits the session's open transaction, as MariaDB does
    /// (see the module docs). Err: the client has been answered (the commit failed).
    pub(super) async fn commit_before_ddl(
        &mut self,
        rt: &Runtime,
        stmt: &StatementPlan,
        action: crate::ddl::DdlAction,
    ) -> Result<(), Answered> {
        self.pending_begin = None;
        let Some(tx) = self.tx_target().cloned() else {
            return Ok(());
        };
        if action == crate::ddl::DdlAction::RunNow {
            if let Ok(d) = router::route(&rt.vschema, &self.ctx, stmt) {
                if self.one_target(&rt.vschema, d, stmt).as_ref() == Some(&tx) {
                    // The backend commits before the DDL on that very connection.
                    return Ok(());
                }
            }
        }
        self.implicit_commit().await
    }

    /// `COMMIT` on the connection of the session's open transaction, if it has one (a
    /// pending `BEGIN` is dropped). Err: the client has been answered.
    pub(super) async fn implicit_commit(&mut self) -> Result<(), Answered> {
        self.pending_begin = None;
        let Some(i) = self
            .held
            .iter()
            .position(|h| h.lease.conn_ref().status & status::IN_TRANS != 0)
        else {
            return Ok(());
        };
        let stateful = self.state_on(&self.held[i].target.cluster);
        let held = self.held.swap_remove(i);
        let (target, mut lease) = (held.target, held.lease);
        match lease.conn().exec(b"\x03COMMIT", ResponseKind::Query).await {
            Ok(c) => {
                self.put_back(target, lease, &Effects::default());
                if c.outcome.error {
                    return Err(self.send_collected(&c).await);
                }
                Ok(())
            }
            Err(e) => {
                drop(lease);
                let e = ProxyError::lost_backend(&target.cluster, e);
                Err(self.fail(e, stateful).await)
            }
        }
    }

    /// What `COM_RESET_CONNECTION` and `COM_CHANGE_USER` do to the session: every
    /// backend connection it holds is reset (its temporary tables, locks, user
    /// variables, prepared statements dropped, its transaction rolled back) before it
    /// goes back to the pool, and the session starts over as if just logged in. Its
    /// database stays, as on MariaDB.
    pub(super) async fn reset_session_state(&mut self) {
        for mut h in std::mem::take(&mut self.held) {
            // A failed reset marks the connection broken: it is closed, not pooled.
            let _ = h.lease.conn().reset().await;
        }
        self.clear_prepared();
        self.own_wait_timeout = None;
        self.vars.clear();
        self.autocommit = true;
        self.pending_begin = None;
        self.pending_once.clear();
        self.last_insert_id = 0;
        self.backend_flags = 0;
        self.last = None;
        self.ddl = DdlSettings {
            wait: self.login_ddl_wait,
            ..DdlSettings::default()
        };
    }

    /// `COM_SET_OPTION`: multi-statements on (0) or off (1) for the session's later
    /// statements (new backend connections are opened or picked with the new
    /// capabilities) and for the connections it holds now (told with `COM_SET_OPTION`
    /// too). Answered with EOF as MariaDB does; any other option gets `1047`.
    pub(super) async fn set_option(&mut self, payload: &[u8]) -> Answered {
        let on = match payload.get(1..3).map(|b| u16::from_le_bytes([b[0], b[1]])) {
            Some(0) => true,
            Some(1) => false,
            _ => {
                return self
                    .send_error(&ProxyError::unknown_command(command::SET_OPTION))
                    .await
            }
        };
        if on {
            self.capabilities |= caps::MULTI_STATEMENTS;
        } else {
            self.capabilities &= !caps::MULTI_STATEMENTS;
        }
        self.key.caps = self.capabilities & caps::RELAY_SENSITIVE;
        let key = self.key;
        for h in &mut self.held {
            let conn = h.lease.conn();
            if conn.set_multi_statements(on, key).await.is_err() {
                conn.broken = true;
            }
        }
        self.held.retain(|h| !h.lease.conn_ref().broken);
        let st = self.idle_status();
        if self.deprecate_eof() {
            let mut p = wire::ok_payload(&OkInfo {
                status: st,
                ..OkInfo::default()
            });
            p[0] = 0xfe;
            self.send_raw(&p).await
        } else {
            self.send_raw(&wire::eof_payload(st)).await
        }
    }

    /// `COM_CHANGE_USER`: the session is reset (as MariaDB does, before it checks the
    /// password), then the new user authenticates (over the login's nonce, or after an
    /// auth switch to the user's plugin) and the session takes its role, scope, database and
    /// collation. A wrong password or a refused database gets its error and leaves the
    /// session with the old user (reset) in its old database.
    pub(super) async fn change_user(&mut self, payload: &[u8]) -> Answered {
        let Some(req) = parse_change_user(payload, self.capabilities) else {
            return self
                .send_error(&ProxyError::unknown_command(command::CHANGE_USER))
                .await;
        };
        let started = tokio::time::Instant::now();
        self.reset_session_state().await;
        let shared = self.shared.clone();
        let entry = shared.users.get(&req.user);
        let plugin = entry.map_or(shared.greeting_plugin, |u| u.auth_plugin);
        // MariaDB's clients compute the first answer over the login's nonce (libmariadb
        // answers even an auth switch to the same plugin over it), and MariaDB checks
        // it over that nonce: so does shardgate. A client that answered for another
        // plugin is switched to the user's, with a fresh nonce.
        let client_plugin = req.auth_plugin.as_deref().unwrap_or(auth::NATIVE_PASSWORD);
        let mut seq = 1u8;
        let (token, nonce) = if client_plugin == plugin.name() {
            (bytes::Bytes::from(req.auth_response.clone()), self.scramble)
        } else {
            let nonce = auth::new_scramble();
            let switch = handshake::build_auth_switch(plugin.name(), &nonce);
            match self.client.send(seq, &switch).await {
                Ok(next) => seq = next,
                Err(_) => return Answered::Close,
            }
            match sha2_login::read_auth_packet(&mut self.client, &mut seq).await {
                Ok(t) => (t, nonce),
                Err(Verdict::Malformed) => {
                    let e = ProxyError::bad_handshake();
                    let _ = self.client.send(seq, &wire::proxy_err_payload(&e)).await;
                    return Answered::Close;
                }
                Err(_) => return Answered::Close,
            }
        };
        let ip = self
            .handle
            .host
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let door = &shared.door;
        crate::timer::sleep(door.login_delay(ip, &req.user, started)).await;
        let verdict = match plugin {
            AuthPlugin::NativePassword => sha2_login::native_verdict(entry, &token, &nonce),
            AuthPlugin::CachingSha2Password => {
                sha2_login::authenticate(
                    &shared,
                    &mut self.client,
                    &mut seq,
                    &req.user,
                    entry,
                    &token,
                    &nonce,
                )
                .await
            }
        };
        let refused = match verdict {
            Verdict::Ok => None,
            Verdict::Denied { using_password } => {
                tracing::info!(session = self.id, user = %LogSafe(&req.user), "change user: access denied");
                let now = tokio::time::Instant::now();
                crate::frontdoor::log_notices(door.throttle.record_failure(ip, &req.user, now));
                let host = ip.to_string();
                Some(ProxyError::access_denied(&req.user, &host, using_password))
            }
            Verdict::Malformed => Some(ProxyError::bad_handshake()),
            Verdict::Gone => return Answered::Close,
        };
        let refused = match (refused, entry) {
            (Some(e), _) => Some(e),
            (None, Some(u)) if u.require_tls && !self.client.io.is_tls() => {
                Some(ProxyError::insecure_transport(Some(&req.user)))
            }
            _ => None,
        };
        if let Some(e) = refused {
            self.note_error(e.code, &e.message);
            return self.send_at(seq, &wire::proxy_err_payload(&e)).await;
        }
        door.throttle.record_success(ip, &req.user);
        let scope = entry.map_or_else(Default::default, |u| u.scope.clone());
        let rt = shared.runtime();
        // `db@replica`: that database, reads from a standby (as at login).
        let (database, replica_reads) = match req.database.as_deref() {
            Some(db) => match super::replica_suffix(db) {
                Some(base) => (Some(base.to_string()), true),
                None => (Some(db.to_string()), false),
            },
            None => (None, false),
        };
        let ctx = match &database {
            None => DbContext::None,
            Some(db) => {
                let resolved = super::login::resolve_database(&rt.vschema, db);
                let checked = match resolved {
                    None => Err(ProxyError::unknown_database(db)),
                    Some(_) if !scope.allows_database(&rt.vschema, db) => {
                        Err(ProxyError::db_access_denied(&req.user, db))
                    }
                    Some(ctx @ (DbContext::PassThrough(_) | DbContext::Workspace { .. })) => {
                        super::login::check_passthrough(&shared, &rt.vschema, &ctx, self.key, db)
                            .await
                            .map(|()| ctx)
                    }
                    Some(ctx) => Ok(ctx),
                };
                match checked {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        self.note_error(e.code, &e.message);
                        return self.send_at(seq, &wire::proxy_err_payload(&e)).await;
                    }
                }
            }
        };
        // The new user's place in its `max_connections`, or the refusal a login
        // beyond it gets; the old user's place is given back.
        if req.user != self.user {
            let limit = super::login::max_connections(&shared, &req.user);
            match door.user_slot(&req.user, limit) {
                Ok(slot) => self.user_slot = slot,
                Err(e) => {
                    self.note_error(e.code, &e.message);
                    return self.send_at(seq, &wire::proxy_err_payload(&e)).await;
                }
            }
        }
        // The new user's session.
        self.role = entry.map_or(crate::access::Role::App, |u| u.role);
        self.admin = self.role.is_admin();
        self.scope = scope;
        self.login_ddl_wait = entry.and_then(|u| u.ddl_wait);
        self.ddl = DdlSettings {
            wait: self.login_ddl_wait,
            ..DdlSettings::default()
        };
        self.user = req.user;
        self.handle.set_user(&self.user);
        self.handle.set_db(database);
        self.ctx = ctx;
        self.replica_reads = replica_reads;
        self.database_changes += 1;
        if let Some(c) = req.collation.and_then(|c| u8::try_from(c).ok()) {
            if c != 0 {
                self.key.collation = c;
            }
        }
        tracing::info!(session = self.id, user = %LogSafe(&self.user), "change user");
        let ok = wire::ok_payload(&OkInfo {
            status: self.idle_status(),
            ..OkInfo::default()
        });
        self.send_at(seq, &ok).await
    }

    /// Sends one packet with sequence id `seq` (an answer inside an exchange).
    async fn send_at(&mut self, seq: u8, payload: &[u8]) -> Answered {
        match self.client.send(seq, payload).await {
            Ok(_) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_change_user, ChangeUser};
    use crate::protocol::caps;

    #[test]
    fn reads_change_user_packets() {
        let mut p = vec![0x11];
        p.extend_from_slice(b"bob\0");
        p.push(3);
        p.extend_from_slice(b"abc");
        p.extend_from_slice(b"db1\0");
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(b"mysql_native_password\0");
        p.extend_from_slice(&[0x03, 1, b'a', 0]);
        let c = caps::SECURE_CONNECTION | caps::PLUGIN_AUTH | caps::CONNECT_ATTRS;
        assert_eq!(
            parse_change_user(&p, c),
            Some(ChangeUser {
                user: "bob".into(),
                auth_response: b"abc".to_vec(),
                database: Some("db1".into()),
                collation: Some(45),
                auth_plugin: Some("mysql_native_password".into()),
            })
        );
        // No database, no more data.
        let p = [0x11, b'x', 0, 0, 0];
        let cu = parse_change_user(&p, c).expect("parses");
        assert_eq!(cu.database, None);
        assert_eq!(cu.collation, None);
        // Truncated: the token's length runs past the end.
        assert_eq!(parse_change_user(&[0x11, b'x', 0, 9, 1], c), None);
        assert_eq!(parse_change_user(&[0x11, b'x'], c), None);
        assert_eq!(parse_change_user(&[], c), None);
    }
}
