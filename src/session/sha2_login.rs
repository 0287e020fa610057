//! The `caching_sha2_password` exchange with a client, after its scramble has arrived
//! (see [`crate::protocol::sha2_auth`] for the hashes and the packets' meaning).
//!
//! Every read is bounded by [`AUTH_PACKET_MAX`] and runs under the login deadline that
//! wraps the whole login; nothing the client sends is trusted to have any length.

use bytes::Bytes;

use crate::frontdoor::LogSafe;
use crate::protocol::packet::{PacketConn, ReadError};
use crate::protocol::sha2_auth::{
    verify_sha2, FAST_AUTH_SUCCESS, MORE_DATA, PERFORM_FULL_AUTHENTICATION, REQUEST_PUBLIC_KEY,
};
use crate::protocol::tls::ClientStream;
use crate::shared::{Shared, UserEntry};

/// Largest packet of the auth exchange a client may send: a scramble, a password, an
/// RSA ciphertext (512 bytes for a 4096-bit key) all fit with room to spare.
pub(super) const AUTH_PACKET_MAX: usize = 4096;

/// The verdict on a `mysql_native_password` token over `nonce` (login and
/// `COM_CHANGE_USER` alike): an unknown user is denied as a wrong password is.
pub(super) fn native_verdict(entry: Option<&UserEntry>, token: &[u8], nonce: &[u8]) -> Verdict {
    if entry.is_some_and(|u| {
        crate::protocol::auth::verify_native(token, nonce, u.password_hash.as_ref())
    }) {
        Verdict::Ok
    } else {
        Verdict::Denied {
            using_password: !token.is_empty(),
        }
    }
}

/// How an authentication exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The client knows the password; the caller sends OK.
    Ok,
    /// Wrong password, unknown user, or a password refused (clear text without TLS):
    /// the caller answers access denied and counts a failure.
    Denied { using_password: bool },
    /// The client's packet made no sense: bad handshake.
    Malformed,
    /// The client went away (or the socket failed).
    Gone,
}

/// Reads the client's next auth packet; on success `seq` is the id to answer with.
pub(super) async fn read_auth_packet(
    client: &mut PacketConn<ClientStream>,
    seq: &mut u8,
) -> Result<Bytes, Verdict> {
    match client.read_packet(AUTH_PACKET_MAX).await {
        Ok((s, p)) => {
            *seq = s.wrapping_add(1);
            Ok(p)
        }
        Err(ReadError::TooLarge(_)) => {
            // The client sent its packet at `seq`; the error answers it.
            *seq = seq.wrapping_add(1);
            Err(Verdict::Malformed)
        }
        Err(_) => Err(Verdict::Gone),
    }
}

/// Sends one packet of the exchange at `seq` and moves `seq` past it.
async fn send(
    client: &mut PacketConn<ClientStream>,
    seq: &mut u8,
    payload: &[u8],
) -> Result<(), Verdict> {
    *seq = client
        .send(*seq, payload)
        .await
        .map_err(|_| Verdict::Gone)?;
    Ok(())
}

/// Runs `caching_sha2_password` for `user` (`entry`: None if nobody has that name; the
/// exchange then runs to its end all the same, so it does not tell unknown names
/// apart) from the client's first `token`, computed over `nonce`. `seq` is the next
/// sequence id to send; on [`Verdict::Ok`] the caller sends OK with it.
pub(super) async fn authenticate(
    shared: &Shared,
    client: &mut PacketConn<ClientStream>,
    seq: &mut u8,
    user: &str,
    entry: Option<&UserEntry>,
    token: &[u8],
    nonce: &[u8],
) -> Verdict {
    match run(shared, client, seq, user, entry, token, nonce).await {
        Ok(v) | Err(v) => v,
    }
}

async fn run(
    shared: &Shared,
    client: &mut PacketConn<ClientStream>,
    seq: &mut u8,
    user: &str,
    entry: Option<&UserEntry>,
    token: &[u8],
    nonce: &[u8],
) -> Result<Verdict, Verdict> {
    // An empty answer claims an empty password (libmysqlclient sends a lone NUL); it is
    // answered at once, with OK or access denied, as MySQL does.
    if token.is_empty() || token == [0] {
        let empty_password = entry.is_some_and(|u| u.sha2_verifier.is_none());
        return Ok(if empty_password {
            Verdict::Ok
        } else {
            Verdict::Denied {
                using_password: false,
            }
        });
    }
    if token.len() != 32 {
        // Not a SHA256 scramble: no password could produce it (MySQL refuses it too).
        return Ok(Verdict::Denied {
            using_password: true,
        });
    }
    // Fast path: only a hash cached by an earlier full authentication can vouch for the
    // client. A miss, or a scramble that does not match (the password may have been
    // changed), both go on to full authentication, as in MySQL.
    if let Some(cached) = shared.sha2_cache.get(user) {
        if entry.is_some() && verify_sha2(token, nonce, &cached) {
            // Counted before the answer goes out: a client that reads it may look at
            // the metrics next (the password is verified either way).
            shared.sha2_cache.count(true);
            send(client, seq, &[MORE_DATA, FAST_AUTH_SUCCESS]).await?;
            tracing::debug!(user = %LogSafe(user), "caching_sha2_password: fast authentication");
            return Ok(Verdict::Ok);
        }
    }
    send(client, seq, &[MORE_DATA, PERFORM_FULL_AUTHENTICATION]).await?;
    let mut answer = read_auth_packet(client, seq).await?;
    let password = if client.io.is_tls() {
        // Over TLS the password comes in clear, NUL-terminated.
        match answer.split_last() {
            Some((0, password)) => Some(password.to_vec()),
            _ => return Err(Verdict::Malformed),
        }
    } else {
        let Some(keys) = shared.rsa_key.clone() else {
            // Cannot happen for a configured caching_sha2 user (a key is generated at
            // start-up); for an unknown name, nothing to decrypt with: refuse.
            return Ok(Verdict::Denied {
                using_password: true,
            });
        };
        if answer[..] == [REQUEST_PUBLIC_KEY] {
            let mut key = Vec::with_capacity(1 + keys.public_pem().len());
            key.push(MORE_DATA);
            key.extend_from_slice(keys.public_pem().as_bytes());
            send(client, seq, &key).await?;
            answer = read_auth_packet(client, seq).await?;
        }
        if answer.len() == keys.size() {
            // A wrong key, nonce or padding decrypts to None: refused like a wrong
            // password. The private-key operation takes about a millisecond of CPU:
            // off the async workers, which serve logged-in sessions meanwhile.
            let nonce = nonce.to_vec();
            tokio::task::spawn_blocking(move || keys.decrypt_password(&answer, &nonce))
                .await
                .ok()
                .flatten()
        } else {
            // Not a ciphertext: a client sending its password in clear over a plain
            // connection. MySQL refuses it; so does shardgate (the damage is done,
            // but the client learns nothing from it).
            tracing::info!(user = %LogSafe(user), "refused: clear-text password without TLS");
            None
        }
    };
    let verifier = entry.and_then(|u| u.sha2_verifier.as_ref());
    match password {
        Some(pw) if verifier.is_some_and(|v| v.matches(&pw)) => {
            shared.sha2_cache.insert(user, &pw);
            shared.sha2_cache.count(false);
            tracing::debug!(user = %LogSafe(user), "caching_sha2_password: full authentication");
            Ok(Verdict::Ok)
        }
        _ => Ok(Verdict::Denied {
            using_password: true,
        }),
    }
}
