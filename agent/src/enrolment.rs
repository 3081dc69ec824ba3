//! How the agent of a new VM gets its certificate. The leader that creates a VM mints a
//! one-time join ticket (its hash goes into the Raft log before the provider is called);
//! the provider hands the ticket to the VM with its configuration. The VM's agent makes a
//! key, sends a certificate request and the ticket to the leader over TLS (checking the
//! leader against the CA; it has no certificate to show yet), and the leader records the
//! ticket as used, for that key, through Raft before it signs. A ticket works for one key
//! of its VM only, until it expires: whoever reads it later (VM metadata, Terraform's
//! state) gets nothing, while the agent that used it, asking again with the same key (kept
//! on its disk) because the answer was lost, gets its certificate.

// Handlers answer `tonic::Status` directly; boxing it would only move the allocation.
#![allow(clippy::result_large_err)]

use super::{AgentOptions, AgentShared};
use crate::backend::{JoinTicket, VmTrust};
use crate::raft::{Request, Response};
use crate::tls::{self, AgentTls, KeyRequest, TlsError};
use ndb_proto::v1 as pb;
use ndb_proto::v1::enrolment_client::EnrolmentClient;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Endpoint;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tracing::{info, warn};

/// How long a join ticket stays good: a VM's creation (a Terraform apply, an image pull)
/// and its agent's start must fit.
pub const TICKET_TTL: Duration = Duration::from_secs(15 * 60);

/// Why an agent has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("VM {vm} has no certificate in {dir} and its configuration holds no join ticket; only the leader that creates a VM can let its agent in")]
    NoTicket { vm: String, dir: String },
    #[error("the join ticket of VM {vm} names no agent to enrol at")]
    NoAgents { vm: String },
    #[error("the cluster refused the join ticket of VM {vm} ({reason}); the leader replaces a VM whose agent cannot join")]
    Refused { vm: String, reason: String },
    #[error("the join ticket of VM {vm} expired before any agent of the cluster enrolled it (last answer: {last}); the leader replaces the VM")]
    Expired { vm: String, last: String },
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A ticket's secret: 256 random bits, hex.
pub fn new_secret() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This agent's certificate: the one it enrolled for before, or issued from the CA it holds,
/// or (a new VM) one it enrols for now with its join ticket.
pub async fn credentials(opts: &AgentOptions) -> Result<AgentTls, EnrolError> {
    let dir = opts.dir.join(tls::TLS_DIR);
    if let Some(tls) = AgentTls::load(&dir, opts.trust.cert_pem())? {
        return Ok(tls);
    }
    match (&opts.trust, &opts.join) {
        (VmTrust::Ca(ca), _) => Ok(AgentTls::issue(ca, &opts.vm)?),
        (VmTrust::CaCert { cert_pem }, Some(ticket)) => {
            let t = std::time::Instant::now();
            let pending = opts.dir.join(tls::ENROLLING_DIR);
            let request = KeyRequest::pending(&pending, &opts.vm)?;
            let enrolled = enrol(&opts.vm, cert_pem, ticket, request).await;
            if let Err(e) = &enrolled {
                // The ticket will never work: the leader replaces the VM.
                if matches!(e, EnrolError::Refused { .. } | EnrolError::Expired { .. }) {
                    let _ = std::fs::remove_dir_all(&pending);
                }
            }
            let tls = enrolled?;
            tls.save(&dir)?;
            let _ = std::fs::remove_dir_all(&pending);
            info!(
                vm = %opts.vm,
                took_ms = t.elapsed().as_millis() as u64,
                "enrolled: certificate kept in {}",
                dir.display()
            );
            Ok(tls)
        }
        (VmTrust::CaCert { .. }, None) => Err(EnrolError::NoTicket {
            vm: opts.vm.clone(),
            dir: dir.display().to_string(),
        }),
    }
}

/// Trades `ticket` for a certificate at the first agent of the ticket that leads; waits for
/// one while the ticket is good (the leader may be changing).
async fn enrol(
    vm: &str,
    ca_cert_pem: &str,
    ticket: &JoinTicket,
    request: KeyRequest,
) -> Result<AgentTls, EnrolError> {
    if ticket.agents.is_empty() {
        return Err(EnrolError::NoAgents { vm: vm.into() });
    }
    let config = AgentTls::enrolment_client_config(ca_cert_pem);
    let mut last = String::from("none yet");
    let mut attempts = 0u32;
    while now_unix_ms() < ticket.expires_unix_ms {
        for ep in &ticket.agents {
            let channel = match Endpoint::from_shared(format!("https://{ep}"))
                .and_then(|e| e.tls_config(config.clone()))
            {
                Ok(e) => e
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy(),
                Err(e) => {
                    last = format!("{ep}: {e}");
                    continue;
                }
            };
            let mut client = EnrolmentClient::new(channel);
            let call = client.enrol(pb::EnrolRequest {
                vm: vm.into(),
                ticket: ticket.secret.clone(),
                csr_pem: request.csr_pem.clone(),
            });
            match call.await {
                Ok(reply) => {
                    let r = reply.into_inner();
                    return Ok(AgentTls::enrolled(
                        ca_cert_pem,
                        request,
                        r.cert_pem,
                        r.ca_key_pem,
                    ));
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                    ) =>
                {
                    return Err(EnrolError::Refused {
                        vm: vm.into(),
                        reason: s.message().to_string(),
                    })
                }
                Err(s) => last = format!("{ep}: {}", s.message()),
            }
        }
        attempts += 1;
        if attempts % 10 == 1 {
            info!(vm, last = %last, "waiting for the leader to enrol this agent");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(EnrolError::Expired {
        vm: vm.into(),
        last,
    })
}

/// The enrolment call of an agent (answered by the leader).
pub struct EnrolmentService {
    shared: Arc<AgentShared>,
}

impl EnrolmentService {
    pub fn new(shared: Arc<AgentShared>) -> Self {
        EnrolmentService { shared }
    }
}

#[tonic::async_trait]
impl pb::enrolment_server::Enrolment for EnrolmentService {
    async fn enrol(
        &self,
        req: GrpcRequest<pb::EnrolRequest>,
    ) -> Result<GrpcResponse<pb::EnrolReply>, Status> {
        let r = req.into_inner();
        let (id, raft) = self.shared.raft().ok_or_else(|| {
            Status::unavailable("this agent has not joined the cluster yet; enrol at another")
        })?;
        let leader = raft.metrics().borrow().current_leader;
        if leader != Some(id) {
            let at = leader
                .and_then(|l| {
                    let rep = self.shared.replicated()?;
                    rep.membership
                        .membership()
                        .get_node(&l)
                        .map(|n| n.grpc_addr.clone())
                })
                .unwrap_or_else(|| "unknown".into());
            return Err(Status::unavailable(format!(
                "this agent does not lead; enrol at the leader (at {at})"
            )));
        }
        let sha256 = crate::api_token::token_sha256(&r.ticket);
        let key_sha256 = tls::request_key_sha256(&r.vm, &r.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = now_unix_ms();
        let refused = || {
            warn!(vm = %r.vm, "refused an enrolment: no valid join ticket for this VM");
            Status::permission_denied(format!(
                "no valid join ticket for VM {}: it is not one the cluster issued for this VM, or it was used or has expired",
                r.vm
            ))
        };
        // Everything that can fail is checked before the ticket is used up.
        if !self
            .shared
            .replicated()
            .is_some_and(|rep| rep.ticket_valid(&r.vm, &sha256, now, Some(&key_sha256)))
        {
            return Err(refused());
        }
        let ca_key_pem = self
            .shared
            .tls
            .ca_key_pem()
            .ok_or_else(|| {
                Status::failed_precondition("this leader holds no key of the cluster CA")
            })?
            .to_string();
        let cert_pem = self
            .shared
            .tls
            .sign(&r.vm, &r.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let used = raft
            .client_write(Request::UseJoinTicket {
                vm: r.vm.clone(),
                sha256,
                now_unix_ms: now,
                key_sha256: Some(key_sha256),
            })
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the ticket as used: {e}")))?;
        if used.data != Response::TicketTaken {
            return Err(refused());
        }
        info!(vm = %r.vm, "enrolled the agent of a new VM with its join ticket");
        Ok(GrpcResponse::new(pb::EnrolReply {
            cert_pem,
            ca_key_pem,
        }))
    }
}

/// Makes this agent a new certificate when its current one is two thirds through its
/// validity (`tls::AGENT_CERT_VALIDITY`), keeps it in its directory and restarts the agent
/// to serve it (tonic fixes a server's TLS settings when it starts). A leader hands its
/// leadership over first. The CA key every agent holds signs it: no other agent needs to be
/// reachable.
pub async fn keep_certificate_fresh(shared: Arc<AgentShared>) {
    const RETRY: Duration = Duration::from_secs(3600);
    let dir = shared.dir.join(tls::TLS_DIR);
    let at = match shared.tls.renew_at(&shared.vm, &dir) {
        Ok(at) => at,
        Err(e) => {
            warn!(vm = %shared.vm, error = %e, "cannot tell when this agent's certificate expires, so it will not be renewed");
            return;
        }
    };
    // In steps: the wall clock may jump (a suspended VM, a clock set right).
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(RETRY)).await;
    }
    loop {
        match shared
            .tls
            .renewed(&shared.vm)
            .and_then(|t| t.save(&dir).map(|()| t))
        {
            Ok(t) => {
                let until = t
                    .validity()
                    .ok()
                    .and_then(|(_, u)| u.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                info!(vm = %shared.vm, valid_until_unix = ?until, "renewed this agent's certificate; restarting to serve it");
                break;
            }
            Err(e) => {
                warn!(vm = %shared.vm, error = %e, "cannot renew this agent's certificate; trying again in an hour");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    let leading = shared.raft().is_some_and(|(id, raft)| {
        let m = raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(id)
    });
    if leading {
        if let Err(e) = shared.hand_over_leadership().await {
            warn!(vm = %shared.vm, error = %e, "could not hand the leadership over before restarting; the others elect a leader");
        }
    }
    shared.request_restart();
}
