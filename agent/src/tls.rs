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
use std::time::{Duration, SystemTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every agent certificate carries besides its VM's: clients verify the server's
/// chain against it (which VM answered is checked by the calls themselves, which name
/// their target VM).
pub const AGENT_SERVER_NAME: &str = "ndb-agent";

/// How long an agent certificate is valid. The agent makes itself a new one (with the CA key
/// it holds) after two thirds of it, plus a spread of up to a month by VM name so that the
/// agents of one cluster, enrolled together, do not restart together to serve their new
/// certificates. The CA's own certificate does not expire.
pub const AGENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back a new certificate's validity starts: a peer whose clock is behind accepts
/// it.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
const RENEWAL_SPREAD: Duration = Duration::from_secs(30 * 24 * 3600);

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
    #[error("this agent's own certificate does not parse ({reason}); remove its directory {dir} so the agent enrols again")]
    BadOwnCertificate { reason: String, dir: String },
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

/// Where an agent keeps the key and request it enrols with until it holds its certificate
/// (inside its data directory; 0600): a retry after a reply that never came, or after a
/// restart, shows the same key, which the leader recognises.
pub const ENROLLING_DIR: &str = "agent-tls.enrolling";

impl KeyRequest {
    /// The request this agent enrols `vm` with: the one kept in `dir` by an earlier try, or
    /// a new one, kept there (fsync'd) before it is sent.
    pub fn pending(dir: &Path, vm: &str) -> Result<KeyRequest, TlsError> {
        let stored = |path: &Path, source| TlsError::Stored {
            path: path.display().to_string(),
            dir: dir.display().to_string(),
            source,
        };
        let (key_path, csr_path) = (dir.join(KEY_FILE), dir.join("request.pem"));
        if let (Ok(key_pem), Ok(csr_pem)) = (
            std::fs::read_to_string(&key_path),
            std::fs::read_to_string(&csr_path),
        ) {
            // One made for another name (a directory reused) is not this VM's.
            let names_vm =
                rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).is_ok_and(|r| {
                    r.params
                        .subject_alt_names
                        .iter()
                        .any(|n| matches!(n, rcgen::SanType::DnsName(d) if d.as_str() == vm))
                });
            if names_vm {
                return Ok(KeyRequest { key_pem, csr_pem });
            }
        }
        let request = key_request(vm)?;
        std::fs::create_dir_all(dir).map_err(|e| stored(dir, e))?;
        crate::write_secret(&key_path, request.key_pem.as_bytes())
            .map_err(|e| stored(&key_path, e))?;
        crate::write_secret(&csr_path, request.csr_pem.as_bytes())
            .map_err(|e| stored(&csr_path, e))?;
        Ok(request)
    }
}

/// SHA-256 (lowercase hex) of the public key a certificate request is for: what a used
/// join ticket remembers, so that the same agent asking again (its answer was lost) is let
/// in again, and nobody else is.
pub fn request_key_sha256(vm: &str, csr_pem: &str) -> Result<String, TlsError> {
    use rcgen::PublicKeyData;
    use sha2::{Digest, Sha256};
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
        TlsError::BadRequest {
            vm: vm.to_string(),
            source,
        }
    })?;
    Ok(Sha256::digest(csr.public_key.subject_public_key_info())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
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
    let now = time::OffsetDateTime::now_utc();
    sign_request_valid(ca, vm, csr_pem, now - CLOCK_SKEW, now + AGENT_CERT_VALIDITY)
}

fn sign_request_valid(
    ca: &ClusterCa,
    vm: &str,
    csr_pem: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<String, TlsError> {
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
    csr.params.not_before = not_before;
    csr.params.not_after = not_after;
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

    /// [`AgentTls::issue`] with a certificate that expires `validity` from now instead of
    /// [`AGENT_CERT_VALIDITY`]: one due for renewal soon, as tests of renewal need.
    pub fn issue_for(ca: &ClusterCa, vm: &str, validity: Duration) -> Result<Self, TlsError> {
        let request = key_request(vm)?;
        let now = time::OffsetDateTime::now_utc();
        let cert_pem = sign_request_valid(ca, vm, &request.csr_pem, now, now + validity)?;
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

    /// A new key and certificate for this agent's `vm`, signed with the CA key it holds
    /// (every agent holds it: any one may lead and enrol VMs): renewal needs nobody else.
    pub fn renewed(&self, vm: &str) -> Result<Self, TlsError> {
        let request = key_request(vm)?;
        let cert_pem = self.sign(vm, &request.csr_pem)?;
        Ok(AgentTls {
            cert_pem,
            key_pem: request.key_pem,
            ..self.clone()
        })
    }

    /// When this agent's certificate is valid (not before, not after).
    pub fn validity(&self) -> Result<(SystemTime, SystemTime), String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes())
            .map_err(|e| e.to_string())?;
        let cert = pem.parse_x509().map_err(|e| e.to_string())?;
        let at = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            }
        };
        let v = cert.validity();
        Ok((at(v.not_before), at(v.not_after)))
    }

    /// When `vm`'s agent makes itself a new certificate: after two thirds of this one's
    /// validity, spread by the VM's name over up to a month (but within the last third).
    pub fn renew_at(&self, vm: &str, dir: &Path) -> Result<SystemTime, TlsError> {
        let (from, until) = self
            .validity()
            .map_err(|reason| TlsError::BadOwnCertificate {
                reason,
                dir: dir.display().to_string(),
            })?;
        let span = until.duration_since(from).unwrap_or_default();
        let spread = RENEWAL_SPREAD.min(span / 6);
        let h = vm.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let offset = if spread.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_secs(h % spread.as_secs().max(1))
        };
        Ok(from + span * 2 / 3 + offset)
    }

    /// This agent's certificate and key (PEM), for the HTTPS API.
    pub fn identity_pem(&self) -> (&str, &str) {
        (&self.cert_pem, &self.key_pem)
    }

    /// The cluster CA's certificate (PEM) this agent trusts.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
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
    fn a_certificate_is_valid_a_year_and_renewed_after_two_thirds_with_the_same_ca() {
        let ca = make_ca().unwrap();
        let tls = AgentTls::issue(&ca, "ndbd-0-4").unwrap();
        let (from, until) = tls.validity().unwrap();
        let now = SystemTime::now();
        assert!(from <= now && now < until);
        let span = until.duration_since(from).unwrap();
        assert_eq!(span, AGENT_CERT_VALIDITY + CLOCK_SKEW);
        let dir = Path::new("/nowhere");
        let at = tls.renew_at("ndbd-0-4", dir).unwrap();
        assert!(
            at >= from + span * 2 / 3 && at < from + span * 5 / 6,
            "{at:?}"
        );
        // Agents enrolled together renew at different moments.
        let others: std::collections::BTreeSet<_> = ["ndbd-0-5", "mysqld-1", "mgmd-0", "api-3"]
            .iter()
            .map(|vm| tls.renew_at(vm, dir).unwrap())
            .collect();
        assert_eq!(others.len(), 4);

        let renewed = tls.renewed("ndbd-0-4").unwrap();
        assert_eq!(names(&renewed.cert_pem).as_deref(), Some("ndbd-0-4"));
        assert_ne!(renewed.key_pem, tls.key_pem);
        assert!(renewed.validity().unwrap().1 >= until);
        // Signed by the same CA: the CA's public key verifies it.
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(renewed.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(renewed.ca_key_pem(), tls.ca_key_pem());
    }

    #[test]
    fn a_damaged_ca_is_a_clear_error() {
        let mut ca = make_ca().unwrap();
        ca.key_pem = "not a key".into();
        let e = AgentTls::issue(&ca, "x").unwrap_err().to_string();
        assert!(e.contains("cluster CA is unusable"), "{e}");
    }
}
