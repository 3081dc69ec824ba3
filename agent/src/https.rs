//! The HTTP API over TLS wherever it leaves loopback. An agent listening on a loopback
//! address serves plain HTTP (nothing but this machine reaches it); on any other address it
//! serves HTTPS with its own certificate, of the cluster CA. Clients check the server
//! against the cluster CA and the name every agent certificate carries
//! ([`AGENT_SERVER_NAME`]), whatever host or address they dialled: a port published by
//! Docker, a VM's address and a DNS name all reach an agent of the same cluster. The token
//! (`Authorization: Bearer`) still decides who may read and change the cluster; TLS keeps
//! it, and the desired state, from being read or altered on the way.

use crate::tls::{AgentTls, AGENT_SERVER_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// A client that has not finished its handshake by then is dropped: it must not hold a
/// connection slot open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the API's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("the cluster CA certificate is not usable PEM ({0}); give the ca.pem of the cluster's data directory (DATA_DIR/tls/ca.pem)")]
    BadCa(String),
    #[error("this agent's certificate or key is not usable for HTTPS ({0}); remove its agent-tls directory so the agent enrols again")]
    BadIdentity(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot make an HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Whether the API at `host` (an address or name, without the port) is plain HTTP: only on
/// loopback.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The URL of `path` on the agent API at `endpoint`. An endpoint is `HOST:PORT` (HTTPS
/// unless HOST is loopback, as the agent decides when it listens) or a URL whose scheme is
/// kept (`https://127.0.0.1:8181` for a container's HTTPS port published on loopback).
pub fn api_url(endpoint: &str, path: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return format!("{endpoint}{path}");
    }
    let scheme = if is_https(endpoint) { "https" } else { "http" };
    format!("{scheme}://{endpoint}{path}")
}

/// Whether the API at `endpoint` (as [`api_url`] takes it) is HTTPS, so a client needs the
/// cluster CA.
pub fn is_https(endpoint: &str) -> bool {
    if endpoint.starts_with("https://") {
        return true;
    }
    if endpoint.starts_with("http://") {
        return false;
    }
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(endpoint);
    !is_loopback_host(host)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client's TLS settings for the agents' API: the server must show a certificate of the
/// cluster CA (`ca_cert_pem`) naming an agent. Clients pass it to reqwest's
/// `use_preconfigured_tls`.
pub fn client_config(ca_cert_pem: &str) -> Result<rustls::ClientConfig, HttpsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
        let cert = cert.map_err(|e| HttpsError::BadCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| HttpsError::BadCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(HttpsError::BadCa("it holds no certificate".into()));
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| HttpsError::BadCa(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AgentVerifier { inner }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client of the agents' API: plain HTTP for loopback endpoints, and HTTPS checked
/// against the cluster CA when `ca_cert_pem` is given (without it an HTTPS endpoint fails
/// its handshake: no other root is trusted).
pub fn client_builder(ca_cert_pem: Option<&str>) -> Result<reqwest::ClientBuilder, HttpsError> {
    let builder = reqwest::Client::builder().tls_built_in_root_certs(false);
    Ok(match ca_cert_pem {
        Some(ca) => builder.use_preconfigured_tls(client_config(ca)?),
        None => builder,
    })
}

/// [`client_builder`], built.
pub fn client(ca_cert_pem: Option<&str>) -> Result<reqwest::Client, HttpsError> {
    client_builder(ca_cert_pem)?
        .build()
        .map_err(HttpsError::Client)
}

/// The server's side: this agent's certificate. Clients show none (the token identifies
/// them).
pub fn server_config(tls: &AgentTls) -> Result<Arc<rustls::ServerConfig>, HttpsError> {
    renewable_server_config(tls).map(|(config, _)| config)
}

/// [`server_config`] for a server that outlives its certificate (the cloud front runs for
/// years; an agent restarts to serve a new one): [`ServedCertificate::replace`] changes what
/// the next handshakes show, while connections already open keep theirs.
pub fn renewable_server_config(
    tls: &AgentTls,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServedCertificate>), HttpsError> {
    let served = Arc::new(ServedCertificate {
        current: std::sync::RwLock::new(certified_key(tls)?),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(served.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), served))
}

/// The certificate a server shows, replaceable while it serves.
#[derive(Debug)]
pub struct ServedCertificate {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServedCertificate {
    /// Shows `tls`'s certificate from the next handshake on.
    pub fn replace(&self, tls: &AgentTls) -> Result<(), HttpsError> {
        let key = certified_key(tls)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        Ok(())
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

fn certified_key(tls: &AgentTls) -> Result<Arc<CertifiedKey>, HttpsError> {
    let (cert_pem, key_pem) = tls.identity_pem();
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpsError::BadIdentity(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| HttpsError::BadIdentity(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::from_der(certs, key, &provider())?))
}

/// Checks the server's chain against the cluster CA for the agents' shared name instead of
/// the dialled host: only the cluster CA signs agent certificates, and a client reaches
/// agents by addresses the certificates cannot all name (published ports, changing VM
/// addresses).
#[derive(Debug)]
struct AgentVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(AGENT_SERVER_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A listener for `axum::serve` that hands over connections once their TLS handshake is
/// done. Handshakes run in tasks of their own, so a slow or hostile client delays no one
/// else; a failed one is logged at debug level and dropped.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(32);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: the same pause as axum's.
                        debug!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS handshake failed"),
                        Err(_) => debug!(%peer, "HTTPS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_are_plain_http_and_others_https_unless_a_url_says_otherwise() {
        assert_eq!(
            api_url("127.0.0.1:8181", "/status"),
            "http://127.0.0.1:8181/status"
        );
        assert_eq!(api_url("127.4.0.9:80", "/x"), "http://127.4.0.9:80/x");
        assert_eq!(api_url("localhost:8181", "/s"), "http://localhost:8181/s");
        assert_eq!(api_url("[::1]:8181", "/s"), "http://[::1]:8181/s");
        assert_eq!(
            api_url("10.213.0.3:8181", "/s"),
            "https://10.213.0.3:8181/s"
        );
        assert_eq!(api_url("0.0.0.0:8181", "/s"), "https://0.0.0.0:8181/s");
        assert_eq!(api_url("agent-1:8181", "/s"), "https://agent-1:8181/s");
        assert_eq!(
            api_url("https://127.0.0.1:18181/", "/status"),
            "https://127.0.0.1:18181/status"
        );
        assert_eq!(api_url("http://10.0.0.1:80", "/s"), "http://10.0.0.1:80/s");
    }

    #[test]
    fn a_ca_that_is_not_pem_is_a_clear_error() {
        let e = client_config("not a certificate").unwrap_err();
        assert!(e.to_string().contains("DATA_DIR/tls/ca.pem"), "{e}");
    }
}
