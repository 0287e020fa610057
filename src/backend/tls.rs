//! TLS from shardgate to its backends (rustls client, ring as the crypto provider).
//!
//! The upgrade is MySQL's in-band one, seen from the client side: read the greeting,
//! check that it offers `CLIENT_SSL`, send an SSLRequest (the first 32 bytes of a
//! handshake response with the SSL flag), run the TLS handshake on the same socket,
//! then send the real handshake response over TLS, its sequence id continuing. The
//! protocol steps live in [`super::conn`]; this module holds the policy
//! ([`BackendTls`]: CA, verification mode, client certificate) and the socket type
//! ([`BackendStream`]).
//!
//! There is never a fallback to clear text: with TLS configured, a server that does
//! not offer it, or whose certificate does not verify, fails the connect.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How a backend's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendTlsMode {
    /// The chain must lead to the CA, and the certificate must name the host (DNS
    /// name or IP address) of the cluster's `primary` address.
    VerifyIdentity,
    /// The chain must lead to the CA; the name in it is not checked (servers whose
    /// certificates name another host, e.g. behind a load balancer or an IP address
    /// that is not in the certificate).
    VerifyCa,
}

impl BackendTlsMode {
    /// Parses a config value; `disabled` is None (no TLS to the backends).
    pub fn parse(s: &str) -> Result<Option<BackendTlsMode>, String> {
        match s {
            "verify_identity" => Ok(Some(BackendTlsMode::VerifyIdentity)),
            "verify_ca" => Ok(Some(BackendTlsMode::VerifyCa)),
            "disabled" => Ok(None),
            other => Err(format!(
                "mode = \"{other}\": expected \"verify_identity\", \"verify_ca\" or \"disabled\""
            )),
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendTlsMode::VerifyIdentity => "verify_identity",
            BackendTlsMode::VerifyCa => "verify_ca",
        }
    }
}

/// TLS towards the backends: the CA that signs their certificates, the verification
/// mode, and optionally the client certificate shardgate presents.
pub struct BackendTls {
    config: Arc<rustls::ClientConfig>,
    /// How certificates are checked.
    pub mode: BackendTlsMode,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Two clusters use the same TLS settings when they share one loaded [`BackendTls`]
/// (the config loads it once for all clusters); contents are not compared.
impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for BackendTls {}

impl BackendTls {
    /// From PEM text: the CA bundle (one or more certificates), the mode, and an
    /// optional client certificate chain and its key (for users that `REQUIRE X509`).
    pub fn from_pem(
        ca_pem: &[u8],
        mode: BackendTlsMode,
        client: Option<(&[u8], &[u8])>,
    ) -> Result<BackendTls, String> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| format!("ca: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca: {e}"))?;
        }
        if roots.is_empty() {
            return Err("ca: no CERTIFICATE block in the PEM".to_string());
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match mode {
            BackendTlsMode::VerifyIdentity => builder.with_root_certificates(roots),
            BackendTlsMode::VerifyCa => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly { roots, algorithms })),
        };
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("cert: {e}"))?;
                if chain.is_empty() {
                    return Err("cert: no CERTIFICATE block in the PEM".to_string());
                }
                let key =
                    PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("cert and key: {e}"))?
            }
        };
        Ok(BackendTls {
            config: Arc::new(config),
            mode,
        })
    }

    /// From PEM files (see [`BackendTls::from_pem`]); errors name the file.
    pub fn from_pem_files(
        ca: &Path,
        mode: BackendTlsMode,
        client: Option<(&Path, &Path)>,
    ) -> Result<BackendTls, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca_pem = read(ca)?;
        let client_pem = match client {
            None => None,
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
        };
        let client_ref = client_pem
            .as_ref()
            .map(|(c, k)| (c.as_slice(), k.as_slice()));
        BackendTls::from_pem(&ca_pem, mode, client_ref)
    }

    /// Runs the client side of the TLS handshake on `tcp` (after the SSLRequest),
    /// presenting `addr`'s host as SNI and checking the certificate against it.
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
        addr: &str,
    ) -> Result<TlsStream<TcpStream>, TlsFailure> {
        let name = server_name(addr).map_err(TlsFailure::Config)?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(TlsFailure::from_io)
    }
}

/// Why a TLS handshake with a backend failed.
#[derive(Debug)]
pub(crate) enum TlsFailure {
    /// The certificate did not verify (unknown issuer, expired, wrong name...).
    Certificate(String),
    /// TLS itself failed (no common version or cipher, an alert from the server,
    /// a bad address for a name): a configuration problem, not a passing one.
    Config(String),
    /// The network failed during the handshake (reset, EOF): may pass.
    Network(io::Error),
}

impl TlsFailure {
    fn from_io(e: io::Error) -> TlsFailure {
        // tokio-rustls reports rustls errors as io::Error wrapping the rustls::Error.
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(
                r @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_)),
            ) => TlsFailure::Certificate(r.to_string()),
            Some(r) => TlsFailure::Config(r.to_string()),
            None => TlsFailure::Network(e),
        }
    }
}

/// The TLS name of `addr` (`host:port`, `[v6]:port`): an IP address when the host is
/// one (certificates then need it as an IP SAN), a DNS name otherwise.
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h),
        None => addr.rsplit_once(':').map(|(h, _)| h),
    }
    .unwrap_or(addr);
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is not a host name or IP address for TLS: {e}"))
}

/// `verify_ca`: the chain must lead to a trusted CA and be valid now; the name is not
/// checked. Signatures of the handshake itself are still verified, so the server must
/// hold the certificate's key.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A backend connection's socket: plain TCP, or TLS over TCP (never `Detached`).
pub type BackendStream = crate::protocol::stream::MaybeTls<TlsStream<TcpStream>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part_of_the_address() {
        let ip = server_name("127.0.0.1:3306").expect("ipv4");
        assert!(matches!(ip, ServerName::IpAddress(_)), "{ip:?}");
        let v6 = server_name("[::1]:3306").expect("ipv6");
        assert!(matches!(v6, ServerName::IpAddress(_)), "{v6:?}");
        let dns = server_name("db-1.example.com:3306").expect("dns");
        assert!(matches!(dns, ServerName::DnsName(_)), "{dns:?}");
        assert!(server_name("bad name:3306").is_err());
    }

    #[test]
    fn modes_parse_and_a_bad_ca_is_refused_with_a_reason() {
        assert_eq!(
            BackendTlsMode::parse("verify_ca"),
            Ok(Some(BackendTlsMode::VerifyCa))
        );
        assert_eq!(BackendTlsMode::parse("disabled"), Ok(None));
        assert!(BackendTlsMode::parse("preferred").is_err());
        let e = BackendTls::from_pem(b"nope", BackendTlsMode::VerifyIdentity, None).unwrap_err();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        let (cert, _) = crate::protocol::tls::self_signed(&["localhost"]).expect("cert");
        for mode in [BackendTlsMode::VerifyIdentity, BackendTlsMode::VerifyCa] {
            assert!(BackendTls::from_pem(cert.as_bytes(), mode, None).is_ok());
        }
        let e = BackendTls::from_pem(
            cert.as_bytes(),
            BackendTlsMode::VerifyCa,
            Some((cert.as_bytes(), b"")),
        )
        .unwrap_err();
        assert!(e.starts_with("key:"), "{e}");
    }
}
