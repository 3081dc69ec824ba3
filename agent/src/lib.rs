//! The agent: the node that runs on every VM. Its gRPC services, its Raft node (storage,
//! network, the state machine that is the cluster state), its HTTP API, the leader's
//! `RemoteRuntime` and membership, agent upgrades and, while it leads, the reconcile loop
//! that drives `agent-core`'s planner. The binary wires in the backends; nothing here knows
//! which ones. The decisions live in `agent-core`, which does no I/O.
//!
//! Lifecycle: an agent first gets its certificate (`enrolment`: the bootstrap agent issues
//! its own; a new VM's agent trades its one-time join ticket at the leader). It starts
//! unjoined (no Raft id) unless it is the bootstrap agent or its
//! directory holds a Raft id from an earlier run. The leader gives it an id (`Join`), adds it
//! as a learner and may promote it to voter. Whoever leads runs the reconciler, whose every
//! event is a Raft entry.

pub mod api_token;
pub mod enrolment;
pub mod grpc;
pub mod http;
pub mod https;
pub mod membership;
pub mod raft;
pub mod reconcile;
pub mod remote;
pub mod tls;
pub mod upgrade;

pub use reconcile::{Journal, JournalError, Reconciler, ReconcilerConfig, Submission, Submit};

// The core's modules under their usual names, so `crate::model::...` reads as in the core.
use agent_core::{actions, backend, desired, model};

use crate::backend::{BackendError, CloudProvider, ProcessRuntime};
use crate::raft::network::{endpoint, GrpcNetwork};
use crate::raft::store;
use crate::raft::{AgentNode, NodeId, Raft, RaftJournal, Replicated, Request, BOOTSTRAP_ID};
use ndb_proto::v1 as pb;
use ndb_proto::v1::agent_client::AgentClient;
use openraft::ServerState;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tonic::transport::Channel;
use tracing::{info, warn, Instrument};

/// What an agent is and how it behaves.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub vm: String,
    pub role: String,
    pub zone: String,
    /// This VM's directory: Raft store, Raft id, logs.
    pub dir: PathBuf,
    /// Start a one-node Raft group if the directory holds none.
    pub bootstrap: bool,
    pub agent_version: String,
    pub reconciler: ReconcilerConfig,
    /// Raft heartbeat; a follower stands for election after 7-8 heartbeats of silence
    /// (see `raft_config`).
    pub heartbeat: Duration,
    /// The host other agents reach this one at, when it is not the listeners' own address
    /// (a container listening on all interfaces).
    pub advertise_host: Option<String>,
    /// The cluster CA this agent trusts (and, for the bootstrap agent, its key): the agent
    /// talks to other agents only over mutual TLS with certificates of it.
    pub trust: agent_core::backend::VmTrust,
    /// The one-time ticket a new VM's agent enrols with (`enrolment`).
    pub join: Option<agent_core::backend::JoinTicket>,
    /// The bootstrap agent: SHA-256 (hex) of the HTTP API's token, recorded in the Raft log
    /// when it leads. Other agents learn it from the log.
    pub api_token_sha256: Option<String>,
}

/// Why an agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The leader asked for a restart (or an upgrade): the binary execs itself again.
    Restart,
}

/// Why an agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] store::OpenError),
    #[error("Raft: {0}")]
    Raft(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the local address of a listener: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Https(#[from] https::HttpsError),
    #[error(transparent)]
    Enrol(#[from] enrolment::EnrolError),
    #[error("cannot set up TLS for the gRPC server: {0}")]
    ServerTls(#[source] tonic::transport::Error),
}

/// Why this agent could not join the Raft group under the id the leader gave it.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// It is a member already, under another id (ids are never reused or changed).
    #[error("this agent is already Raft node {have}; it cannot become {asked}")]
    AlreadyMember { have: NodeId, asked: NodeId },
    /// Its Raft id could not be made durable.
    #[error("cannot record Raft id {raft_id} in {path}: {source}")]
    Store {
        raft_id: NodeId,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The Raft node did not start.
    #[error("cannot start Raft node {raft_id}: {source}")]
    Start {
        raft_id: NodeId,
        #[source]
        source: AgentError,
    },
}

/// Why another agent could not be asked who it is.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("bad agent address {endpoint}: {source}")]
    Address {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the agent at {endpoint} did not answer: {}", status.message())]
    Call {
        endpoint: String,
        #[source]
        status: tonic::Status,
    },
}

/// State every part of the agent shares.
pub struct AgentShared {
    pub vm: String,
    pub role: String,
    pub zone: String,
    pub grpc_addr: String,
    pub http_addr: String,
    pub dir: PathBuf,
    opts: AgentOptions,
    raft: RwLock<Option<(NodeId, Raft)>>,
    /// The Raft id in this agent's directory, known before Raft has started: a restarting
    /// agent must never look unjoined (it would be taken for a wiped one).
    stored_raft_id: std::sync::atomic::AtomicU64,
    sm: RwLock<Option<Arc<RwLock<Replicated>>>>,
    join_lock: tokio::sync::Mutex<()>,
    restart: Notify,
    /// The running reconciler's inbox while this agent leads.
    inbox: Mutex<Option<mpsc::Sender<Submit>>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Agents created by this leader that may not be in the membership yet.
    fresh: Mutex<BTreeMap<String, String>>,
    provider: Arc<dyn CloudProvider>,
    /// When the leader last reached this agent (a follower's proof that a leader exists).
    leader_contact: Mutex<Option<std::time::Instant>>,
    /// While this agent leads: its reconciler's last look at every VM's program.
    programs_seen: reconcile::ProgramsSeen,
    /// This agent's certificate, for every connection to another agent.
    tls: tls::AgentTls,
}

const RAFT_ID_FILE: &str = "raft_id";
const RAFT_STORE_FILE: &str = "raft.redb";

/// Whom this agent can vouch for as the leader right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderView {
    /// The leader (this agent or another) was heard from by a quorum or by this agent lately.
    Confirmed(NodeId),
    /// No leader this agent can vouch for, and why.
    Unknown(String),
}

impl AgentShared {
    /// Records that the leader's append (or heartbeat) reached this agent.
    pub fn heard_from_leader(&self) {
        if let Ok(mut t) = self.leader_contact.lock() {
            *t = Some(std::time::Instant::now());
        }
    }

    /// How long without a sign of a quorum before a leader counts as unknown: ten
    /// heartbeats, at least a second (a follower stands for election after 7-8 heartbeats).
    fn stale_after(&self) -> Duration {
        (self.opts.heartbeat * 10).max(Duration::from_secs(1))
    }

    /// The leader as far as this agent can tell. A leader that no quorum has acknowledged
    /// lately, or a follower that has not heard from its leader, says it does not know:
    /// status must never claim what no quorum stands behind.
    pub fn leader_view(&self) -> LeaderView {
        let Some((my_id, raft)) = self.raft() else {
            return LeaderView::Unknown("this agent has not joined the cluster".into());
        };
        let m = raft.metrics().borrow().clone();
        let stale = self.stale_after();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let names = |ids: &mut dyn Iterator<Item = NodeId>| -> String {
            let all = m.membership_config.membership();
            ids.map(|id| {
                all.get_node(&id)
                    .map(|n| n.vm.clone())
                    .unwrap_or_else(|| format!("raft id {id}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
        };
        match m.state {
            openraft::ServerState::Leader => {
                let alone = voters.iter().all(|v| *v == my_id);
                match m.millis_since_quorum_ack {
                    _ if alone => LeaderView::Confirmed(my_id),
                    Some(ms) if u128::from(ms) <= stale.as_millis() => {
                        LeaderView::Confirmed(my_id)
                    }
                    ms => LeaderView::Unknown(format!(
                        "no quorum: this agent was elected but a majority of the voters ({}) has not answered {}; nobody leads until they do",
                        names(&mut voters.iter().copied().filter(|v| *v != my_id)),
                        ms.map(|ms| format!("for {:.1} s", ms as f64 / 1000.0))
                            .unwrap_or_else(|| "yet".into())
                    )),
                }
            }
            openraft::ServerState::Follower | openraft::ServerState::Learner => {
                let last = self.leader_contact.lock().ok().and_then(|t| *t);
                match (m.current_leader, last) {
                    (Some(l), Some(t)) if t.elapsed() <= stale => LeaderView::Confirmed(l),
                    (Some(l), _) => LeaderView::Unknown(format!(
                        "no word from the last known leader ({}) for over {:.1} s; the voters ({}) may have lost their quorum",
                        names(&mut std::iter::once(l)),
                        stale.as_secs_f64(),
                        names(&mut voters.iter().copied())
                    )),
                    (None, _) => LeaderView::Unknown(format!(
                        "no leader is elected; voters: {}",
                        names(&mut voters.iter().copied())
                    )),
                }
            }
            openraft::ServerState::Candidate => LeaderView::Unknown(format!(
                "an election is under way and no majority of the voters ({}) has answered",
                names(&mut voters.iter().copied())
            )),
            openraft::ServerState::Shutdown => {
                LeaderView::Unknown("this agent's Raft node has stopped".into())
            }
        }
    }

    /// This agent's identity as other agents see it.
    pub fn identity(&self) -> pb::Identity {
        pb::Identity {
            vm: self.vm.clone(),
            raft_id: self.raft_id().unwrap_or_else(|| {
                self.stored_raft_id
                    .load(std::sync::atomic::Ordering::SeqCst)
            }),
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
            agent_version: self.agent_version(),
            role: self.role.clone(),
            zone: self.zone.clone(),
        }
    }

    /// The agent version: the one installed by the last upgrade, else this build's.
    pub fn agent_version(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent_version"))
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.opts.agent_version.clone())
    }

    pub fn raft(&self) -> Option<(NodeId, Raft)> {
        self.raft.read().ok().and_then(|r| r.clone())
    }

    pub fn raft_id(&self) -> Option<NodeId> {
        self.raft().map(|(id, _)| id)
    }

    /// A copy of the replicated state as this agent has applied it.
    pub fn replicated(&self) -> Option<Replicated> {
        let sm = self.sm.read().ok()?.clone()?;
        let r = sm.read().ok()?.clone();
        Some(r)
    }

    fn node(&self) -> AgentNode {
        AgentNode {
            vm: self.vm.clone(),
            role: self.role.clone(),
            zone: self.zone.clone(),
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
        }
    }

    pub fn request_restart(&self) {
        self.restart.notify_one();
    }

    /// The gRPC address of `vm`'s agent: the newest membership entry, else one just created.
    pub fn endpoint_of(&self, vm: &str) -> Option<String> {
        let from_membership = self.replicated().and_then(|r| {
            r.membership
                .membership()
                .nodes()
                .filter(|(_, n)| n.vm == vm)
                .max_by_key(|(id, _)| **id)
                .map(|(_, n)| n.grpc_addr.clone())
        });
        from_membership.or_else(|| self.fresh.lock().ok()?.get(vm).cloned())
    }

    /// A client of the agent at `ep` over a cached channel.
    pub fn agent_client(&self, ep: &str) -> Result<AgentClient<Channel>, tonic::transport::Error> {
        let mut ch = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = ch.get(ep) {
            return Ok(AgentClient::new(c.clone()));
        }
        let c = endpoint(ep, &self.tls)?.connect_lazy();
        ch.insert(ep.to_string(), c.clone());
        Ok(AgentClient::new(c))
    }

    /// Who may call this agent: a peer whose certificate (of the cluster CA, which the TLS
    /// handshake checked) names a VM the cluster has not deleted. A VM is deleted once every
    /// Raft id it had is retired and none of its agents is a member.
    pub fn check_peer(
        &self,
        certs: Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
    ) -> Result<String, tonic::Status> {
        let vm = certs
            .and_then(|c| tls::peer_vm(&c))
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate naming a VM"))?;
        if let Some(rep) = self.replicated() {
            if rep.left_the_cluster(&vm) {
                warn!(peer = %vm, "refused a call with the certificate of a deleted VM");
                return Err(tonic::Status::permission_denied(format!(
                    "the certificate of VM {vm}, which left the cluster, is no longer accepted"
                )));
            }
        }
        Ok(vm)
    }

    /// Asks the agent at `ep` who it is.
    pub async fn identity_of(
        &self,
        ep: &str,
        timeout: Duration,
    ) -> Result<pb::Identity, ReachError> {
        let mut c = self
            .agent_client(ep)
            .map_err(|source| ReachError::Address {
                endpoint: ep.to_string(),
                source,
            })?;
        let mut req = tonic::Request::new(pb::IdentityRequest {});
        req.set_timeout(timeout);
        c.get_identity(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| ReachError::Call {
                endpoint: ep.to_string(),
                status,
            })
    }

    /// After a restart or upgrade: waits until `vm`'s agent answers again.
    pub async fn wait_agent_back(&self, vm: &str) -> Result<(), BackendError> {
        use backon::{ConstantBuilder, Retryable};
        let patience = Duration::from_secs(30);
        let poll = Duration::from_millis(200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answers = || async {
            let ep = self.endpoint_of(vm).ok_or(())?;
            self.identity_of(&ep, Duration::from_secs(1))
                .await
                .map(|_| ())
                .map_err(|_| ())
        };
        answers
            .retry(
                ConstantBuilder::new()
                    .with_delay(poll)
                    .with_max_times((patience.as_millis() / poll.as_millis()) as usize),
            )
            .await
            .map_err(|()| {
                BackendError::transient(format!(
                    "the agent of {vm} did not answer within {} s of its restart",
                    patience.as_secs()
                ))
                .on(vm)
            })
    }

    /// Joins the Raft group under `raft_id` (assigned by the leader). Idempotent for the
    /// same id; an agent never takes a second id (a wiped agent starts over unjoined).
    pub async fn join(self: &Arc<Self>, raft_id: NodeId) -> Result<(), JoinError> {
        let _g = self.join_lock.lock().await;
        match self.raft_id() {
            Some(id) if id == raft_id => return Ok(()),
            Some(have) => {
                return Err(JoinError::AlreadyMember {
                    have,
                    asked: raft_id,
                })
            }
            None => {}
        }
        let path = self.dir.join(RAFT_ID_FILE);
        write_durably(&path, raft_id.to_string().as_bytes()).map_err(|source| {
            JoinError::Store {
                raft_id,
                path: path.display().to_string(),
                source,
            }
        })?;
        self.stored_raft_id
            .store(raft_id, std::sync::atomic::Ordering::SeqCst);
        start_raft(self, raft_id)
            .await
            .map_err(|source| JoinError::Start { raft_id, source })?;
        info!(vm = %self.vm, raft_id, "joined the cluster's Raft group");
        Ok(())
    }

    /// Makes another voter leader (before this agent restarts or upgrades itself): stops
    /// heartbeats so the followers' leases run out, asks a live voter to stand, and waits
    /// until someone else leads.
    pub async fn hand_over_leadership(&self) -> Result<(), BackendError> {
        let Some((my_id, raft)) = self.raft() else {
            return Ok(());
        };
        let m = raft.metrics().borrow().clone();
        let candidates: Vec<AgentNode> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != my_id)
            .filter_map(|id| m.membership_config.membership().get_node(&id).cloned())
            .collect();
        if candidates.is_empty() {
            return Err(BackendError::refused(
                "no other voter can take over the leadership",
            ));
        }
        info!(vm = %self.vm, "handing the leadership over before this agent restarts");
        raft.runtime_config().heartbeat(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut asked = false;
        while tokio::time::Instant::now() < deadline {
            let leader = raft.metrics().borrow().current_leader;
            if leader.is_some() && leader != Some(my_id) {
                return Ok(());
            }
            if !asked {
                for n in &candidates {
                    if let Ok(mut c) = self.agent_client(&n.grpc_addr) {
                        let req = pb::StatusRequest {
                            target: Some(pb::Target {
                                vm: n.vm.clone(),
                                op_id: 0,
                            }),
                        };
                        if c.take_leadership(req).await.is_ok() {
                            asked = true;
                            break;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        raft.runtime_config().heartbeat(true);
        Err(BackendError::transient(
            "no other agent took over the leadership within 10 s",
        ))
    }

    /// Hands a desired state to the reconciler if this agent leads.
    /// The leader's last look at every VM's program (empty on a follower).
    pub fn programs_seen(&self) -> BTreeMap<String, crate::backend::ProgramStatus> {
        self.programs_seen
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn forget_programs_seen(&self) {
        if let Ok(mut m) = self.programs_seen.lock() {
            m.clear();
        }
    }

    pub fn leader_inbox(&self) -> Option<mpsc::Sender<Submit>> {
        self.inbox.lock().ok()?.clone()
    }
}

/// Writes a small file and fsyncs it and its directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_synced(path, bytes, 0o644)
}

/// Writes a secret the same way, 0600 from its creation: never readable by others, not
/// even for a moment.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_synced(path, bytes, 0o600)
}

/// Through a temporary file made with `mode` (umask applies) and a rename, fsync'd with its
/// directory: a crash leaves the old file or the new one, never half of one.
fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn raft_config(heartbeat: Duration) -> Result<openraft::Config, AgentError> {
    let hb = heartbeat.as_millis() as u64;
    openraft::Config {
        cluster_name: "managed-rondb".into(),
        heartbeat_interval: hb,
        // openraft makes a follower that knows a leader wait its lease (the maximum
        // timeout) plus a random timeout before it stands: 4 + 3..4 heartbeats, 700 to 800
        // ms at the default 100 ms. With 4..8 it was 1.2 to 1.6 s, and a new leader took
        // 1.4 s after a kill. Seven heartbeats lost in a row still start no election.
        election_timeout_min: hb * 3,
        election_timeout_max: hb * 4,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 200,
        ..Default::default()
    }
    .validate()
    .map_err(|e| AgentError::Raft(e.to_string()))
}

async fn start_raft(shared: &Arc<AgentShared>, id: NodeId) -> Result<Raft, AgentError> {
    let (log, sm) = store::open(&shared.dir.join(RAFT_STORE_FILE))?;
    let sm_view = sm.shared();
    let config = Arc::new(raft_config(shared.opts.heartbeat)?);
    let raft = Raft::new(id, config, GrpcNetwork::new(shared.tls.clone()), log, sm)
        .await
        .map_err(|e| AgentError::Raft(e.to_string()))?;
    if let Ok(mut w) = shared.sm.write() {
        *w = Some(sm_view);
    }
    if let Ok(mut w) = shared.raft.write() {
        *w = Some((id, raft.clone()));
    }
    tokio::spawn(watch_leadership(Arc::clone(shared), id, raft.clone()));
    Ok(raft)
}

/// Runs an agent until it is asked to restart. `grpc` and `http` are bound listeners.
pub async fn run(
    opts: AgentOptions,
    grpc: TcpListener,
    http: TcpListener,
    provider: Arc<dyn CloudProvider>,
    runtime: Arc<dyn ProcessRuntime>,
) -> Result<Exit, AgentError> {
    let shared = start(opts, grpc, http, provider, runtime).await?;
    shared.restart.notified().await;
    // Let the reply to the restart request leave before the process execs again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Some((_, raft)) = shared.raft() {
        let _ = raft.shutdown().await;
    }
    Ok(Exit::Restart)
}

/// Gets the agent's certificate, starts its servers and its Raft node (if it has joined)
/// and returns; they run on in tasks of their own.
async fn start(
    opts: AgentOptions,
    grpc: TcpListener,
    http: TcpListener,
    provider: Arc<dyn CloudProvider>,
    runtime: Arc<dyn ProcessRuntime>,
) -> Result<Arc<AgentShared>, AgentError> {
    let advertised = |l: &TcpListener| -> Result<String, AgentError> {
        let a = l.local_addr().map_err(AgentError::Listener)?;
        Ok(match &opts.advertise_host {
            Some(h) => format!("{h}:{}", a.port()),
            None => a.to_string(),
        })
    };
    let grpc_addr = advertised(&grpc)?;
    let http_addr = advertised(&http)?;
    std::fs::create_dir_all(&opts.dir).map_err(|source| AgentError::Io {
        path: opts.dir.display().to_string(),
        source,
    })?;
    let agent_tls = enrolment::credentials(&opts).await?;
    let shared = Arc::new(AgentShared {
        vm: opts.vm.clone(),
        role: opts.role.clone(),
        zone: opts.zone.clone(),
        grpc_addr,
        http_addr,
        dir: opts.dir.clone(),
        opts: opts.clone(),
        raft: RwLock::new(None),
        stored_raft_id: std::sync::atomic::AtomicU64::new(0),
        sm: RwLock::new(None),
        join_lock: tokio::sync::Mutex::new(()),
        restart: Notify::new(),
        inbox: Mutex::new(None),
        channels: Mutex::new(HashMap::new()),
        fresh: Mutex::new(BTreeMap::new()),
        provider,
        leader_contact: Mutex::new(None),
        programs_seen: Arc::default(),
        tls: agent_tls,
    });

    let id_file = opts.dir.join(RAFT_ID_FILE);
    let stored_id = std::fs::read_to_string(&id_file)
        .ok()
        .and_then(|s| s.trim().parse::<NodeId>().ok());
    if let Some(id) = stored_id {
        shared
            .stored_raft_id
            .store(id, std::sync::atomic::Ordering::SeqCst);
    }

    // gRPC first: a restarted agent must answer its peers as soon as Raft runs.
    // Every call: TLS (the handshake refuses plain text and certificates of other CAs).
    // Agent and Raft calls: the caller's certificate is required and its VM checked
    // against the cluster state.
    let gate = {
        let shared = Arc::clone(&shared);
        move |req: tonic::Request<()>| shared.check_peer(req.peer_certs()).map(|_| req)
    };
    let services = tonic::transport::Server::builder()
        .tls_config(shared.tls.server_config())
        .map_err(AgentError::ServerTls)?
        .add_service(ndb_proto::v1::agent_server::AgentServer::with_interceptor(
            grpc::AgentService::new(Arc::clone(&shared), runtime),
            gate.clone(),
        ))
        .add_service(ndb_proto::v1::raft_server::RaftServer::with_interceptor(
            grpc::RaftService::new(Arc::clone(&shared)),
            gate,
        ))
        // The one call open to a caller without a certificate: it needs a join ticket.
        .add_service(ndb_proto::v1::enrolment_server::EnrolmentServer::new(
            enrolment::EnrolmentService::new(Arc::clone(&shared)),
        ))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc));
    tokio::spawn(async move {
        if let Err(e) = services.await {
            warn!(error = %e, "gRPC server stopped");
        }
    });
    tokio::spawn(enrolment::keep_certificate_fresh(Arc::clone(&shared)));
    let app = http::router(Arc::clone(&shared));
    let http_local = http.local_addr().map_err(AgentError::Listener)?;
    if http_local.ip().is_loopback() {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http, app).await {
                warn!(error = %e, "HTTP server stopped");
            }
        });
    } else {
        // Beyond loopback the token and the desired state cross a network: HTTPS only.
        let config = https::server_config(&shared.tls)?;
        let listener = https::TlsListener::new(http, config).map_err(AgentError::Listener)?;
        info!(vm = %opts.vm, address = %http_local, "HTTP API served over TLS (cluster CA)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "HTTPS server stopped");
            }
        });
    }

    match stored_id {
        Some(id) => {
            info!(vm = %opts.vm, raft_id = id, "rejoining with the Raft id in {}", id_file.display());
            start_raft(&shared, id).await?;
        }
        None if opts.bootstrap => {
            write_durably(&id_file, BOOTSTRAP_ID.to_string().as_bytes()).map_err(|source| {
                AgentError::Io {
                    path: id_file.display().to_string(),
                    source,
                }
            })?;
            let raft = start_raft(&shared, BOOTSTRAP_ID).await?;
            let members = BTreeMap::from([(BOOTSTRAP_ID, shared.node())]);
            match raft.initialize(members).await {
                Ok(()) => info!(vm = %opts.vm, "started a new one-node Raft group"),
                Err(e) => info!(vm = %opts.vm, "Raft group already initialized ({e})"),
            }
        }
        None => info!(vm = %opts.vm, "waiting for the leader to let this agent join"),
    }
    Ok(shared)
}

/// Starts the leader's duties when this node becomes leader, stops them when it stops.
async fn watch_leadership(shared: Arc<AgentShared>, id: NodeId, raft: Raft) {
    let mut metrics = raft.metrics();
    let mut task: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let leading = {
            let m = metrics.borrow();
            m.current_leader == Some(id) && m.state == ServerState::Leader
        };
        let running = task.as_ref().is_some_and(|t| !t.is_finished());
        if leading && !running {
            // A handover may have switched heartbeats off; a leader always sends them.
            raft.runtime_config().heartbeat(true);
            let span = tracing::info_span!("leader", vm = %shared.vm, raft_id = id);
            task = Some(tokio::spawn(
                lead(Arc::clone(&shared), raft.clone()).instrument(span),
            ));
        } else if !leading && running {
            info!(vm = %shared.vm, "no longer the leader; the reconciler stops");
            if let Some(t) = task.take() {
                t.abort();
            }
            if let Ok(mut i) = shared.inbox.lock() {
                *i = None;
            }
            shared.forget_programs_seen();
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The leader's duties: membership upkeep and the reconciler, resumed from the log.
async fn lead(shared: Arc<AgentShared>, raft: Raft) {
    // Everything committed by earlier leaders is applied before we read the state.
    if let Err(e) = raft.ensure_linearizable().await {
        warn!(error = %e, "cannot confirm leadership; not leading");
        return;
    }
    let Some(rep) = shared.replicated() else {
        return;
    };
    if let Some(hash) = &shared.opts.api_token_sha256 {
        if rep.api_token_sha256.as_ref() != Some(hash) {
            // The token `ndb-agent up` holds is the cluster's (a new file is a new token).
            match raft
                .client_write(Request::SetApiToken {
                    sha256: hash.clone(),
                })
                .await
            {
                Ok(_) => info!(vm = %shared.vm, "recorded the HTTP API token's hash"),
                Err(e) => {
                    warn!(error = %e, "cannot record the HTTP API token's hash; not leading");
                    return;
                }
            }
        }
    }
    info!(
        vm = %shared.vm,
        accepted_id = ?rep.cluster.accepted.as_ref().map(|d| d.id),
        in_flight = rep.cluster.in_flight.len(),
        "leading: resuming the reconciliation from the Raft log"
    );
    let (tx, rx) = mpsc::channel(16);
    if let Ok(mut i) = shared.inbox.lock() {
        *i = Some(tx);
    }
    let members = Arc::new(membership::Membership::new(
        Arc::clone(&shared),
        raft.clone(),
    ));
    let upkeep = tokio::spawn(Arc::clone(&members).upkeep());
    let runtime = Arc::new(remote::RemoteRuntime::new(Arc::clone(&shared)));
    let mut reconciler = Reconciler::new(
        Arc::clone(&members) as Arc<dyn CloudProvider>,
        runtime,
        rep.cluster,
        shared.opts.reconciler.clone(),
    )
    .with_membership(members)
    .with_journal(Arc::new(RaftJournal::new(raft)))
    .with_inbox(rx)
    .with_programs_seen(Arc::clone(&shared.programs_seen));
    reconciler.record_leader(&shared.vm).await;
    let why = reconciler.serve().await;
    upkeep.abort();
    if let Ok(mut i) = shared.inbox.lock() {
        *i = None;
    }
    shared.forget_programs_seen();
    warn!(reason = %why, "reconciler stopped");
}

#[cfg(test)]
mod tests;
