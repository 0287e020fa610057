//! TLS from clients to shardgate (rustls, with ring as the crypto provider).
//!
//! MySQL upgrades in band: the server's greeting offers `CLIENT_SSL`, the client answers
//! with an SSLRequest (the first 32 bytes of a handshake response, SSL flag set), both
//! sides run a TLS handshake on the same socket, and the client then sends its real
//! handshake response over TLS, its sequence id continuing from the SSLRequest's.
//!
//! [`ClientStream`] is the client socket either way; the plain variant is the hot path
//! and costs one `match` per read or write. [`ServerTls`] holds the certificate and the
//! policy (`require`), and [`start_tls`] does the upgrade inside the login deadline.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::StartHandshake;

use super::packet::PacketConn;

/// A client connection's socket: plain TCP, or TLS over TCP after an SSLRequest
/// (`Detached` while the handshake runs); either may speak the compressed protocol
/// after the login ([`super::compress`]).
pub type ClientStream = super::compress::MaybeCompressed<ClientSocket>;

/// The socket under a client's compression layer.
pub type ClientSocket = super::stream::MaybeTls<TlsStream<TcpStream>>;

/// A new client connection's stream: plain TCP, uncompressed.
pub fn client_stream(tcp: TcpStream) -> ClientStream {
    super::compress::MaybeCompressed::new(ClientSocket::Plain(tcp))
}

/// TLS towards clients: the certificate shardgate presents, and whether clients must
/// use it.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    /// Refuse clients that log in without TLS (ERROR 3159).
    pub require: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From PEM text: a certificate chain (leaf first) and its private key (PKCS#8,
    /// PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], require: bool) -> Result<ServerTls, String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        if chain.is_empty() {
            return Err("certificate: no CERTIFICATE block in the PEM".to_string());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and key: {e}"))?;
        Ok(ServerTls {
            config: Arc::new(config),
            require,
        })
    }

    /// From PEM files (see [`ServerTls::from_pem`]); errors name the file.
    pub fn from_pem_files(cert: &Path, key: &Path, require: bool) -> Result<ServerTls, String> {
        let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
        ServerTls::from_pem(&cert_pem, &key_pem, require)
            .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
    }

    /// Runs the server side of a TLS handshake on `tcp`. `early` holds bytes already
    /// read from the socket after the SSLRequest: a client sends its ClientHello right
    /// behind the SSLRequest without waiting, so both may arrive in one read.
    async fn accept(&self, mut tcp: TcpStream, early: &[u8]) -> io::Result<TlsStream<TcpStream>> {
        let mut hello = rustls::server::Acceptor::default();
        let mut pending = early.to_vec();
        loop {
            let mut rest = &pending[..];
            while !rest.is_empty() {
                if hello.read_tls(&mut rest)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS ClientHello too large",
                    ));
                }
            }
            match hello.accept() {
                Ok(Some(accepted)) => {
                    return StartHandshake::from_parts(accepted, tcp)
                        .into_stream(self.config.clone())
                        .await;
                }
                Ok(None) => {}
                Err((e, mut alert)) => {
                    let mut out = Vec::new();
                    let _ = alert.write_all(&mut out);
                    let _ = tcp.write_all(&out).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            pending.clear();
            pending.resize(4096, 0);
            let n = tcp.read(&mut pending).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            pending.truncate(n);
        }
    }
}

/// Upgrades `client` to TLS after its SSLRequest (already consumed from `rbuf`). On
/// error the connection is unusable and must be dropped.
pub async fn start_tls(tls: &ServerTls, client: &mut PacketConn<ClientStream>) -> io::Result<()> {
    let ClientSocket::Plain(tcp) = std::mem::replace(&mut client.io.inner, ClientSocket::Detached)
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SSLRequest on a connection that is not plain TCP",
        ));
    };
    let early = client.rbuf.split();
    let stream = tls.accept(tcp, &early).await?;
    client.io.inner = ClientSocket::Tls(Box::new(stream));
    Ok(())
}

/// A self-signed certificate and its key, both PEM, for `names` (DNS names or IP
/// addresses): what `shardgate demo` serves.
pub fn self_signed(names: &[&str]) -> Result<(String, String), String> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    Ok((certified.cert.pem(), certified.key_pair.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_loads_and_garbage_is_refused_with_a_reason() {
        let (cert, key) = self_signed(&["localhost", "127.0.0.1"]).expect("self-signed pair");
        assert!(ServerTls::from_pem(cert.as_bytes(), key.as_bytes(), false).is_ok());
        let no_cert = ServerTls::from_pem(b"hello", key.as_bytes(), false).unwrap_err();
        assert!(no_cert.contains("no CERTIFICATE"), "{no_cert}");
        let no_key = ServerTls::from_pem(cert.as_bytes(), b"", false).unwrap_err();
        assert!(no_key.starts_with("key:"), "{no_key}");
        let (_, other_key) = self_signed(&["localhost"]).expect("second pair");
        let mismatch =
            ServerTls::from_pem(cert.as_bytes(), other_key.as_bytes(), false).unwrap_err();
        assert!(mismatch.contains("certificate and key"), "{mismatch}");
    }
}
