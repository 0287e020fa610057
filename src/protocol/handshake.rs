//! The connection-phase packets: the server greeting (HandshakeV10) and the client's
//! HandshakeResponse41, both built and parsed, for the client side (shardgate as a
//! server) and the backend side (shardgate as a client).

use bytes::{BufMut, BytesMut};

use super::caps;
use super::wire::{get_lenenc_int, get_lenenc_str, get_nul_str, put_lenenc_int, put_lenenc_str};

/// A server greeting (HandshakeV10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Server version string (MariaDB sends `5.5.5-10.11...`).
    pub server_version: String,
    /// The server's id for this connection.
    pub connection_id: u32,
    /// Auth scramble (20 bytes for mysql_native_password).
    pub scramble: Vec<u8>,
    /// Capability flags offered.
    pub capabilities: u32,
    /// Default collation id.
    pub collation: u8,
    /// Status flags.
    pub status: u16,
    /// Default auth plugin.
    pub auth_plugin: String,
    /// MariaDB extended capabilities (only when `LONG_PASSWORD` is clear, which is
    /// how a MariaDB server says it has them).
    pub ext_capabilities: u32,
}

/// Builds a greeting payload.
pub fn build_greeting(g: &Greeting) -> BytesMut {
    let mut p = BytesMut::with_capacity(128);
    p.put_u8(10);
    p.put_slice(g.server_version.as_bytes());
    p.put_u8(0);
    p.put_u32_le(g.connection_id);
    let (part1, part2) = g.scramble.split_at(g.scramble.len().min(8));
    p.put_slice(part1);
    p.put_u8(0);
    p.put_u16_le(g.capabilities as u16);
    p.put_u8(g.collation);
    p.put_u16_le(g.status);
    p.put_u16_le((g.capabilities >> 16) as u16);
    p.put_u8((g.scramble.len() + 1) as u8);
    p.put_slice(&[0u8; 6]);
    p.put_u32_le(g.ext_capabilities);
    p.put_slice(part2);
    p.put_u8(0);
    p.put_slice(g.auth_plugin.as_bytes());
    p.put_u8(0);
    p
}

/// Parses a greeting payload; None if it is malformed or not protocol 10.
pub fn parse_greeting(p: &[u8]) -> Option<Greeting> {
    if p.first() != Some(&10) {
        return None;
    }
    let mut at = 1;
    let server_version = String::from_utf8_lossy(get_nul_str(p, &mut at)?).into_owned();
    let connection_id = u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let mut scramble = p.get(at..at + 8)?.to_vec();
    at += 9;
    let cap_lo = u16::from_le_bytes(p.get(at..at + 2)?.try_into().ok()?) as u32;
    at += 2;
    let collation = *p.get(at)?;
    let status = u16::from_le_bytes(p.get(at + 1..at + 3)?.try_into().ok()?);
    let cap_hi = u16::from_le_bytes(p.get(at + 3..at + 5)?.try_into().ok()?) as u32;
    at += 5;
    let capabilities = cap_lo | cap_hi << 16;
    let data_len = *p.get(at)? as usize;
    let ext_capabilities = if capabilities & caps::LONG_PASSWORD == 0 {
        u32::from_le_bytes(p.get(at + 7..at + 11)?.try_into().ok()?)
    } else {
        0
    };
    at += 11;
    let mut auth_plugin = String::new();
    if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = data_len.saturating_sub(8).max(13);
        let part2 = p.get(at..at + n)?;
        at += n;
        let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
        scramble.extend_from_slice(part2);
    }
    if capabilities & caps::PLUGIN_AUTH != 0 {
        let rest = p.get(at..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        auth_plugin = String::from_utf8_lossy(&rest[..end]).into_owned();
    }
    Some(Greeting {
        server_version,
        connection_id,
        scramble,
        capabilities,
        collation,
        status,
        auth_plugin,
        ext_capabilities,
    })
}

/// A client's HandshakeResponse41.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    /// Capability flags the client asks for.
    pub capabilities: u32,
    /// Largest packet the client accepts.
    pub max_packet: u32,
    /// Connection collation id.
    pub collation: u8,
    /// User name.
    pub user: String,
    /// Auth response.
    pub auth_response: Vec<u8>,
    /// Initial database.
    pub database: Option<String>,
    /// Auth plugin the response was computed for.
    pub auth_plugin: Option<String>,
    /// Connection attributes, raw (the length-encoded block without its length).
    pub attributes: Vec<u8>,
    /// MariaDB extended capabilities (only when `LONG_PASSWORD` is clear).
    pub ext_capabilities: u32,
}

/// Whether `p` is an SSLRequest (a truncated response with the SSL flag).
pub fn is_ssl_request(p: &[u8]) -> bool {
    p.len() == 32
        && p.get(..4)
            .and_then(|c| c.try_into().ok())
            .map(u32::from_le_bytes)
            .is_some_and(|c| c & caps::SSL != 0)
}

/// Parses a HandshakeResponse41; None if malformed (or protocol 3.20).
pub fn parse_handshake_response(p: &[u8]) -> Option<HandshakeResponse> {
    let capabilities = u32::from_le_bytes(p.get(0..4)?.try_into().ok()?);
    if capabilities & caps::PROTOCOL_41 == 0 {
        return None;
    }
    let max_packet = u32::from_le_bytes(p.get(4..8)?.try_into().ok()?);
    let collation = *p.get(8)?;
    let ext_capabilities = if capabilities & caps::LONG_PASSWORD == 0 {
        u32::from_le_bytes(p.get(28..32)?.try_into().ok()?)
    } else {
        0
    };
    let mut at = 32;
    let user = String::from_utf8(get_nul_str(p, &mut at)?.to_vec()).ok()?;
    let auth_response = if capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        get_lenenc_str(p, &mut at)?.to_vec()
    } else if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = *p.get(at)? as usize;
        let s = p.get(at + 1..at + 1 + n)?.to_vec();
        at += 1 + n;
        s
    } else {
        get_nul_str(p, &mut at)?.to_vec()
    };
    let mut database = None;
    if capabilities & caps::CONNECT_WITH_DB != 0 && at < p.len() {
        let db = get_nul_str(p, &mut at)?;
        if !db.is_empty() {
            database = Some(String::from_utf8(db.to_vec()).ok()?);
        }
    }
    let mut auth_plugin = None;
    if capabilities & caps::PLUGIN_AUTH != 0 && at < p.len() {
        // Some clients omit the NUL at the very end.
        let rest = &p[at..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        auth_plugin = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
        at += (end + 1).min(rest.len());
    }
    let mut attributes = Vec::new();
    if capabilities & caps::CONNECT_ATTRS != 0 && at < p.len() {
        let mut a = at;
        if let Some(block) = get_lenenc_str(p, &mut a) {
            attributes = block.to_vec();
        }
    }
    Some(HandshakeResponse {
        capabilities,
        max_packet,
        collation,
        user,
        auth_response,
        database,
        auth_plugin,
        attributes,
        ext_capabilities,
    })
}

/// Builds a HandshakeResponse41 payload (shardgate logging in to a backend).
pub fn build_handshake_response(r: &HandshakeResponse) -> BytesMut {
    let mut p = BytesMut::with_capacity(128);
    p.put_u32_le(r.capabilities);
    p.put_u32_le(r.max_packet);
    p.put_u8(r.collation);
    p.put_slice(&[0u8; 19]);
    p.put_u32_le(r.ext_capabilities);
    p.put_slice(r.user.as_bytes());
    p.put_u8(0);
    if r.capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        put_lenenc_str(&mut p, &r.auth_response);
    } else {
        p.put_u8(r.auth_response.len() as u8);
        p.put_slice(&r.auth_response);
    }
    if r.capabilities & caps::CONNECT_WITH_DB != 0 {
        p.put_slice(r.database.as_deref().unwrap_or("").as_bytes());
        p.put_u8(0);
    }
    if r.capabilities & caps::PLUGIN_AUTH != 0 {
        p.put_slice(r.auth_plugin.as_deref().unwrap_or("").as_bytes());
        p.put_u8(0);
    }
    if r.capabilities & caps::CONNECT_ATTRS != 0 {
        put_lenenc_int(&mut p, r.attributes.len() as u64);
        p.put_slice(&r.attributes);
    }
    p
}

/// Parses an AuthSwitchRequest (0xfe, plugin name, data); returns (plugin, data).
pub fn parse_auth_switch(p: &[u8]) -> Option<(String, Vec<u8>)> {
    if p.first() != Some(&0xfe) {
        return None;
    }
    let mut at = 1;
    let plugin = String::from_utf8_lossy(get_nul_str(p, &mut at)?).into_owned();
    let data = p.get(at..).unwrap_or_default();
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    Some((plugin, data.to_vec()))
}

/// Builds an AuthSwitchRequest payload.
pub fn build_auth_switch(plugin: &str, data: &[u8]) -> BytesMut {
    let mut p = BytesMut::with_capacity(plugin.len() + data.len() + 3);
    p.put_u8(0xfe);
    p.put_slice(plugin.as_bytes());
    p.put_u8(0);
    p.put_slice(data);
    p.put_u8(0);
    p
}

/// Reads a length-encoded integer (re-exported for attribute parsing in tests).
pub fn lenenc(p: &[u8], at: &mut usize) -> Option<u64> {
    get_lenenc_int(p, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_roundtrip() {
        let g = Greeting {
            server_version: "5.5.5-10.11.6-MariaDB".into(),
            connection_id: 77,
            scramble: b"abcdefghijklmnopqrst".to_vec(),
            capabilities: caps::SERVER_OFFERED,
            collation: 45,
            status: 2,
            auth_plugin: "mysql_native_password".into(),
            ext_capabilities: 0,
        };
        assert_eq!(parse_greeting(&build_greeting(&g)), Some(g.clone()));
        let mariadb = Greeting {
            capabilities: caps::SERVER_OFFERED & !caps::LONG_PASSWORD,
            ext_capabilities: caps::MARIADB_EXTENDED_METADATA,
            ..g
        };
        assert_eq!(parse_greeting(&build_greeting(&mariadb)), Some(mariadb));
    }

    #[test]
    fn response_roundtrip_with_db_plugin_and_attrs() {
        let r = HandshakeResponse {
            capabilities: caps::BACKEND_BASE | caps::CONNECT_ATTRS | caps::DEPRECATE_EOF,
            max_packet: 1 << 24,
            collation: 45,
            user: "app".into(),
            auth_response: vec![7; 20],
            database: Some("app".into()),
            auth_plugin: Some("mysql_native_password".into()),
            attributes: vec![3, b'a', b'b', b'c', 1, b'x'],
            ext_capabilities: 0,
        };
        assert_eq!(
            parse_handshake_response(&build_handshake_response(&r)),
            Some(r)
        );
    }

    #[test]
    fn truncated_responses_are_none() {
        let r = HandshakeResponse {
            capabilities: caps::BACKEND_BASE,
            user: "app".into(),
            auth_response: vec![1; 20],
            database: Some("db".into()),
            auth_plugin: Some("mysql_native_password".into()),
            ..Default::default()
        };
        let full = build_handshake_response(&r);
        for cut in 0..40 {
            assert!(
                parse_handshake_response(&full[..cut]).is_none(),
                "cut {cut}"
            );
        }
        assert!(parse_handshake_response(b"garbage garbage garbage garbage garbage").is_none());
    }
}
