//! Mutual TLS between agents. The cluster CA (`ClusterCa`, made by `ndb-agent up`) is handed
//! to every VM by its provider; each agent issues itself a certificate for its VM's name at
//! start and uses it both as a server (gRPC) and as a client (Raft and agent calls). Peers
//! must show a certificate of the same CA: plain-text and foreign-CA connections fail in
//! the handshake. Who the peer is (the VM name in its certificate) is then checked against
//! the Raft state: the certificate of a VM the cluster deleted is refused, and a Raft message
//! must come from the VM that holds the sender's Raft id.

use agent_core::backend::ClusterCa;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every agent certificate carries besides its VM's: clients verify the server's
/// chain against it (which VM answered is checked by the calls themselves, which name
/// their target VM).
pub const AGENT_SERVER_NAME: &str = "ndb-agent";

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the cluster CA: {0}")]
    MakeCa(#[source] rcgen::Error),
    #[error("the cluster CA is unusable (its certificate or key PEM does not parse): {0}")]
    BadCa(#[source] rcgen::Error),
    #[error("cannot issue the certificate of VM {vm}: {source}")]
    Issue {
        vm: String,
        #[source]
        source: rcgen::Error,
    },
}

/// Makes a new cluster CA (ECDSA P-256).
pub fn make_ca() -> Result<ClusterCa, TlsError> {
    let key = KeyPair::generate().map_err(TlsError::MakeCa)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::MakeCa)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "managed-rondb cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(TlsError::MakeCa)?;
    Ok(ClusterCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// One agent's TLS material: the CA it trusts and its own certificate and key.
#[derive(Clone)]
pub struct AgentTls {
    ca_cert_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentTls { .. }")
    }
}

impl AgentTls {
    /// A certificate for `vm` (common name and DNS name), signed by the cluster CA, for
    /// server and client use.
    pub fn issue(ca: &ClusterCa, vm: &str) -> Result<Self, TlsError> {
        let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(TlsError::BadCa)?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(TlsError::BadCa)?;
        let issue_err = |source| TlsError::Issue {
            vm: vm.to_string(),
            source,
        };
        let key = KeyPair::generate().map_err(issue_err)?;
        let mut params = CertificateParams::new(vec![vm.to_string(), AGENT_SERVER_NAME.into()])
            .map_err(issue_err)?;
        params.distinguished_name.push(DnType::CommonName, vm);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
        Ok(AgentTls {
            ca_cert_pem: ca.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The gRPC server's side: this agent's certificate; callers must show one of the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_cert_pem))
    }

    /// The client's side: the server must show a certificate of the CA; this agent shows
    /// its own.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_cert_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(AGENT_SERVER_NAME)
    }
}

/// The VM a peer's certificate (DER, the leaf first) names, if it names one.
pub fn peer_vm(certs: &[tonic::transport::CertificateDer<'static>]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_vm_and_the_key_never_shows_in_debug() {
        let ca = make_ca().unwrap();
        let tls = AgentTls::issue(&ca, "ndbd-0-4").unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(tls.cert_pem.as_bytes()).unwrap();
        let der = tonic::transport::CertificateDer::from(pem.contents);
        assert_eq!(peer_vm(&[der]).as_deref(), Some("ndbd-0-4"));
        let shown = format!("{ca:?} {tls:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains(&ca.key_pem), "{shown}");
    }

    #[test]
    fn a_damaged_ca_is_a_clear_error() {
        let mut ca = make_ca().unwrap();
        ca.key_pem = "not a key".into();
        let e = AgentTls::issue(&ca, "x").unwrap_err().to_string();
        assert!(e.contains("cluster CA is unusable"), "{e}");
    }
}
