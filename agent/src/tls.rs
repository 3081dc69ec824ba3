//! Mutual TLS between agents. The cluster CA (`ClusterCa`) is made by `ndb-agent up` (or the
//! cloud front) and held by the bootstrap agent, which issues its own certificate. A VM a
//! leader creates gets only the CA's certificate and a one-time join ticket: its agent makes
//! a key, sends a certificate request with the ticket to the leader (`enrolment`), and keeps
//! the certificate it gets (and the CA key, since it may lead one day) in `agent-tls/`,
//! 0600. Every agent uses its certificate both as a server (gRPC) and as a client (Raft and
//! agent calls). A caller must show a certificate of the same CA: plain-text and
//! foreign-CA connections fail in the handshake, and a caller without a certificate reaches
//! only the enrolment call. Who the peer is (the VM name in its certificate) is then checked
//! against the Raft state: the certificate of a VM the cluster deleted is refused, and a
//! Raft message must come from the VM that holds the sender's Raft id.

use agent_core::backend::ClusterCa;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::Path;
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
    #[error(
        "the certificate request for VM {vm} is not a valid, self-signed PKCS#10 request: {source}"
    )]
    BadRequest {
        vm: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("this agent holds no key of the cluster CA, so it cannot enrol VM {vm}")]
    NoCaKey { vm: String },
    #[error("{path}: {source}; remove the directory {dir} so the agent enrols again (its VM is replaced if its ticket was used)")]
    Stored {
        path: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where an enrolled agent keeps its certificate, key and the CA's key (inside its data
/// directory; every file 0600).
pub const TLS_DIR: &str = "agent-tls";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const CA_KEY_FILE: &str = "ca-key.pem";

/// What every agent certificate says: its VM's name (common name and DNS name) and the
/// shared server name, for server and client use.
fn agent_params(vm: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(vec![vm.to_string(), AGENT_SERVER_NAME.into()])?;
    params.distinguished_name.push(DnType::CommonName, vm);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// A key made for enrolment and the certificate request that carries its public half.
pub struct KeyRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRequest { .. }")
    }
}

/// Makes this agent's key and a request for a certificate naming `vm`.
pub fn key_request(vm: &str) -> Result<KeyRequest, TlsError> {
    let issue_err = |source| TlsError::Issue {
        vm: vm.to_string(),
        source,
    };
    let key = KeyPair::generate().map_err(issue_err)?;
    let csr = agent_params(vm)
        .and_then(|p| p.serialize_request(&key))
        .and_then(|c| c.pem())
        .map_err(issue_err)?;
    Ok(KeyRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr,
    })
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

/// A certificate of `ca` for the agent of `vm`, for the key of the request `csr_pem` (whose
/// signature proves the caller holds it). The names are the CA's to choose: only `vm` and
/// the shared server name, whatever the request asked for.
fn sign_request(ca: &ClusterCa, vm: &str, csr_pem: &str) -> Result<String, TlsError> {
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
        TlsError::BadRequest {
            vm: vm.to_string(),
            source,
        }
    })?;
    let issue_err = |source| TlsError::Issue {
        vm: vm.to_string(),
        source,
    };
    csr.params = agent_params(vm).map_err(issue_err)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(TlsError::BadCa)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(TlsError::BadCa)?;
    Ok(csr.signed_by(&issuer).map_err(issue_err)?.pem())
}

/// One agent's TLS material: the CA it trusts, its own certificate and key, and the CA's
/// key to enrol new VMs with when it leads.
#[derive(Clone)]
pub struct AgentTls {
    ca_cert_pem: String,
    cert_pem: String,
    key_pem: String,
    ca_key_pem: Option<String>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentTls { .. }")
    }
}

impl AgentTls {
    /// A certificate for `vm`, signed by the cluster CA whose key this agent holds.
    /// The same path as an enrolment, signed here: one way to make an agent certificate.
    pub fn issue(ca: &ClusterCa, vm: &str) -> Result<Self, TlsError> {
        let request = key_request(vm)?;
        let cert_pem = sign_request(ca, vm, &request.csr_pem)?;
        Ok(AgentTls {
            ca_cert_pem: ca.cert_pem.clone(),
            cert_pem,
            key_pem: request.key_pem,
            ca_key_pem: Some(ca.key_pem.clone()),
        })
    }

    /// What an agent holds after enrolling: the key it made, the certificate it was given.
    pub fn enrolled(
        ca_cert_pem: &str,
        request: KeyRequest,
        cert_pem: String,
        ca_key_pem: String,
    ) -> Self {
        AgentTls {
            ca_cert_pem: ca_cert_pem.to_string(),
            cert_pem,
            key_pem: request.key_pem,
            ca_key_pem: Some(ca_key_pem).filter(|k| !k.is_empty()),
        }
    }

    /// A certificate for the agent of `vm` from its request (an enrolment this leader
    /// answers), with the CA key this agent holds.
    pub fn sign(&self, vm: &str, csr_pem: &str) -> Result<String, TlsError> {
        let key_pem = self
            .ca_key_pem
            .clone()
            .ok_or_else(|| TlsError::NoCaKey { vm: vm.to_string() })?;
        let ca = ClusterCa {
            cert_pem: self.ca_cert_pem.clone(),
            key_pem,
        };
        sign_request(&ca, vm, csr_pem)
    }

    /// The CA's key, handed to an agent that enrols.
    pub fn ca_key_pem(&self) -> Option<&str> {
        self.ca_key_pem.as_deref()
    }

    /// The certificate an earlier enrolment left in `dir` (None if it never enrolled).
    pub fn load(dir: &Path, ca_cert_pem: &str) -> Result<Option<Self>, TlsError> {
        let read = |file: &str| -> Result<Option<String>, TlsError> {
            let path = dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TlsError::Stored {
                    path: path.display().to_string(),
                    dir: dir.display().to_string(),
                    source,
                }),
            }
        };
        let (Some(cert_pem), Some(key_pem)) = (read(CERT_FILE)?, read(KEY_FILE)?) else {
            return Ok(None);
        };
        Ok(Some(AgentTls {
            ca_cert_pem: ca_cert_pem.to_string(),
            cert_pem,
            key_pem,
            ca_key_pem: read(CA_KEY_FILE)?,
        }))
    }

    /// Keeps an enrolment's result in `dir` (0600, fsync'd): the ticket it cost is used up,
    /// so a restart must find it. The certificate is written last: it marks a whole set.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        let stored = |path: &Path, source| TlsError::Stored {
            path: path.display().to_string(),
            dir: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| stored(dir, e))?;
        let mut files = vec![(KEY_FILE, self.key_pem.as_str())];
        if let Some(k) = &self.ca_key_pem {
            files.push((CA_KEY_FILE, k));
        }
        files.push((CERT_FILE, &self.cert_pem));
        for (file, text) in files {
            let path = dir.join(file);
            crate::write_secret(&path, text.as_bytes()).map_err(|e| stored(&path, e))?;
        }
        Ok(())
    }

    /// The gRPC server's side: this agent's certificate; callers must show one of the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_cert_pem))
            // A caller without a certificate gets through the handshake (a certificate it
            // shows must still be of the CA) and reaches the enrolment call only: the
            // agent and Raft services refuse it (`AgentShared::check_peer`).
            .client_auth_optional(true)
    }

    /// An agent that has no certificate yet: it checks the server against the CA and shows
    /// nothing itself (enrolment only).
    pub fn enrolment_client_config(ca_cert_pem: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_cert_pem))
            .domain_name(AGENT_SERVER_NAME)
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
        assert_eq!(names(&tls.cert_pem).as_deref(), Some("ndbd-0-4"));
        let shown = format!("{ca:?} {tls:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains(&ca.key_pem), "{shown}");
    }

    fn names(cert_pem: &str) -> Option<String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
        peer_vm(&[tonic::transport::CertificateDer::from(pem.contents)])
    }

    #[test]
    fn a_signed_request_names_the_vm_of_the_ticket_whatever_it_asked_for() {
        let ca = make_ca().unwrap();
        let leader = AgentTls::issue(&ca, "bootstrap").unwrap();
        let asks_for_another = key_request("ndbd-0-1").unwrap();
        let cert = leader.sign("mysqld-9", &asks_for_another.csr_pem).unwrap();
        assert_eq!(names(&cert).as_deref(), Some("mysqld-9"));
        let e = leader.sign("mysqld-9", "not a request").unwrap_err();
        assert!(matches!(e, TlsError::BadRequest { .. }), "{e}");
        // An agent that never got the CA's key cannot sign.
        let enrolled =
            AgentTls::enrolled(&ca.cert_pem, key_request("x").unwrap(), cert, String::new());
        let e = enrolled.sign("y", &asks_for_another.csr_pem).unwrap_err();
        assert!(matches!(e, TlsError::NoCaKey { .. }), "{e}");
        assert!(!format!("{asks_for_another:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_damaged_ca_is_a_clear_error() {
        let mut ca = make_ca().unwrap();
        ca.key_pem = "not a key".into();
        let e = AgentTls::issue(&ca, "x").unwrap_err().to_string();
        assert!(e.contains("cluster CA is unusable"), "{e}");
    }
}
