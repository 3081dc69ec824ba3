//! The two doors to the outside world. The reconciler is generic over them, so the same loop
//! drives an in-memory simulation, local processes, containers and cloud VMs.

use crate::actions::RestoreStep;
use crate::desired::{BackupSpec, VmType};
use crate::model::{ConfigFile, Role};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The operation id of the action a backend call belongs to. Remote backends send it along,
/// so an agent that already ran an operation answers a new leader's repeat with the first
/// result instead of doing it twice. [`OpId::NONE`] outside an action: no deduplication.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct OpId(pub u64);

impl OpId {
    pub const NONE: OpId = OpId(0);
}

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The cluster's certificate authority (PEM). Agents talk to each other only over TLS with
/// certificates of this CA, both ways. The bootstrap agent holds it from the start; every
/// other agent receives the key when it enrols (any agent may lead and must then enrol the
/// agents of new VMs). Providers never carry the key: a VM gets [`VmTrust::CaCert`] and a
/// [`JoinTicket`]. It never enters the Raft log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    /// The key is a secret: it never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("<secret>"))
            .finish()
    }
}

/// What a VM's agent trusts and how it comes by its certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VmTrust {
    /// The bootstrap agent (and a VM configured by an older version): it holds the CA's
    /// key and issues its own certificate.
    Ca(ClusterCa),
    /// Every VM a leader creates: the CA's certificate only. Its agent enrols with the
    /// [`JoinTicket`] of its spec and keeps the certificate it is given.
    CaCert { cert_pem: String },
}

impl VmTrust {
    pub fn cert_pem(&self) -> &str {
        match self {
            VmTrust::Ca(ca) => &ca.cert_pem,
            VmTrust::CaCert { cert_pem } => cert_pem,
        }
    }
}

impl std::fmt::Debug for VmTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmTrust::Ca(ca) => ca.fmt(f),
            VmTrust::CaCert { cert_pem } => f
                .debug_struct("CaCert")
                .field("cert_pem", &format_args!("{} bytes", cert_pem.len()))
                .finish(),
        }
    }
}

/// The one-time credential a leader mints for a VM it creates; the provider hands it to the
/// VM with its configuration. Its agent trades it, once, for a certificate naming that VM
/// (only the ticket's SHA-256 is in the Raft log). Whoever reads it later, from a VM's
/// metadata or Terraform's state, finds it used or expired.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTicket {
    pub secret: String,
    /// gRPC endpoints of the cluster's agents, the issuing leader first: where to enrol.
    pub agents: Vec<String>,
    /// Milliseconds since the Unix epoch after which the ticket is refused.
    pub expires_unix_ms: u64,
}

impl std::fmt::Debug for JoinTicket {
    /// The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTicket")
            .field("secret", &format_args!("<secret>"))
            .field("agents", &self.agents)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish()
    }
}

/// What the leader asks a provider to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub role: Role,
    pub zone: String,
    pub vm_type: VmType,
    pub storage_gib: u32,
    pub temporary: bool,
    pub agent_version: String,
    /// Set by the leader's membership layer just before the provider is called, never by
    /// the planner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Box<JoinTicket>>,
}

/// Whether a VM the provider still has is up. A VM that is down (its machine stopped, its
/// agent dead) keeps its disks: it is started again, not replaced, because its data node's
/// file system may hold the only copy of rows. A VM that is gone is not listed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum VmState {
    #[default]
    Running,
    Down,
}

/// A VM as the provider reports it: the truth a new leader starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub role: Role,
    pub zone: String,
    pub vm_type: VmType,
    pub storage_gib: u32,
    pub address: String,
    /// Where the VM's agent answers gRPC (`host:port`); empty where there is no real agent.
    #[serde(default)]
    pub agent_endpoint: String,
    #[serde(default)]
    pub state: VmState,
    /// Where RonDB lives on the VM when several VMs share one host (the local provider):
    /// then RonDB's files are kept under it and its servers bind to the VM's own address.
    /// `None`: the VM is a machine of its own, RonDB lives in `/srv/rondb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// Set with `home`: the shared host's directory where every data node of the cluster
    /// keeps its files (RonDB separates them by node id, so a node's files do not depend on
    /// which VM runs it) and writes its backups (the local backup sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dir: Option<String>,
    /// Where every VM of the cluster reaches the backup sink (a volume all containers
    /// mount): data nodes write their backups straight into it, so any VM can restore
    /// them. `None`: as `host_dir` says, or on the VM's own disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<String>,
}

/// What kind of failure a backend call met: it decides what the reconciler does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The VM does not exist (lost or deleted): drift, not a failed attempt; the reconciler
    /// observes and replans instead of counting a retry.
    VmGone,
    /// Worth trying again as is: a timeout, an agent that cannot be reached, a leader that
    /// handed over.
    Transient,
    /// The world refused: RonDB or the cloud said no, a file or program is missing.
    Refused,
}

/// Why a backend call failed: what kind of failure, on which VM, in which operation, what
/// the backend (or RonDB) said, and the underlying error where there is one.
#[derive(Clone)]
pub struct BackendError {
    pub kind: ErrorKind,
    /// The VM the call was for, where it names one.
    pub vm: Option<String>,
    /// The operation the call belonged to ([`OpId::NONE`] outside an action).
    pub op: OpId,
    /// What went wrong, for people: the backend's or RonDB's own words.
    pub message: String,
    /// The error underneath (an I/O error, a gRPC status, ...); it stays on this machine.
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            vm: None,
            op: OpId::NONE,
            message: message.into(),
            source: None,
        }
    }

    /// The VM `vm` is gone.
    pub fn vm_gone(vm: impl Into<String>) -> Self {
        let vm = vm.into();
        BackendError::new(
            ErrorKind::VmGone,
            format!("VM {vm} does not exist (lost or deleted)"),
        )
        .on(vm)
    }

    pub fn transient(message: impl Into<String>) -> Self {
        BackendError::new(ErrorKind::Transient, message)
    }

    pub fn refused(message: impl Into<String>) -> Self {
        BackendError::new(ErrorKind::Refused, message)
    }

    /// Names the VM the call was for.
    pub fn on(mut self, vm: impl Into<String>) -> Self {
        self.vm = Some(vm.into());
        self
    }

    /// Names the operation the call belonged to.
    pub fn in_op(mut self, op: OpId) -> Self {
        self.op = op;
        self
    }

    /// Keeps the underlying error.
    pub fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(e));
        self
    }

    /// The world changed under the action (its VM is gone): not an attempt that failed, so
    /// the reconciler observes and replans instead of counting a retry.
    pub fn is_drift(&self) -> bool {
        self.kind == ErrorKind::VmGone
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            ErrorKind::Transient => write!(
                f,
                "transient failure: {}; the action will be retried",
                self.message
            ),
            ErrorKind::VmGone | ErrorKind::Refused => f.write_str(&self.message),
        }
    }
}

impl std::fmt::Debug for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendError")
            .field("kind", &self.kind)
            .field("vm", &self.vm)
            .field("op", &self.op)
            .field("message", &self.message)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Equal when kind, VM, operation and message are (the underlying error is not compared).
impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.vm == other.vm
            && self.op == other.op
            && self.message == other.message
    }
}

impl Eq for BackendError {}

/// Creates and removes machines. Implementations: mock, local, docker, terraform.
#[async_trait]
pub trait CloudProvider: Send + Sync {
    /// Creates a VM with an agent of `spec.agent_version` on it; returns when the agent answers.
    async fn create_vm(&self, op: OpId, spec: &VmSpec) -> Result<VmInfo, BackendError>;
    /// Deletes a VM and its storage. Deleting a VM that is already gone succeeds.
    async fn delete_vm(&self, op: OpId, name: &str) -> Result<(), BackendError>;
    /// Every VM of this cluster the provider knows, created by any leader, down ones included.
    async fn list_vms(&self) -> Result<Vec<VmInfo>, BackendError>;
    /// Brings a VM that is down back up with its disks; returns when its agent answers.
    /// Starting a VM that runs succeeds; one that is gone fails with [`ErrorKind::VmGone`].
    async fn start_vm(&self, op: OpId, name: &str) -> Result<VmInfo, BackendError>;
}

/// Which RonDB program a VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProgramKind {
    Mgmd,
    DataNode,
    Mysqld,
    Api,
}

/// A program start: the real command line, so a real runtime only has to exec it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramSpec {
    pub kind: ProgramKind,
    pub version: String,
    /// Node ids the program uses (one for mgmd and data nodes; a pool for mysqld/API).
    pub node_ids: Vec<u32>,
    /// Data node `--initial`, management server `--initial`.
    pub initial: bool,
    pub command: Vec<String>,
}

/// What a VM's runtime reports about its program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProgramStatus {
    pub running: bool,
    pub version: Option<String>,
    /// The program's node ids as RonDB's management server sees them (`get status`): a
    /// process can run and still be starting, or be cut off from the cluster. Empty when
    /// the runtime does not ask RonDB (the dummy) or no management server answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rondb: Vec<RonDbNode>,
}

/// One node id's state in RonDB's own words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RonDbNode {
    pub node_id: u32,
    pub status: NodeStatus,
    /// The start phase while `Starting` (RonDB's `startphase`), else 0.
    #[serde(default)]
    pub start_phase: u32,
}

/// RonDB's node status words (`get status`, `ndb_mgm SHOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    NoContact,
    NotStarted,
    Starting,
    Started,
    ShuttingDown,
    Restarting,
    SingleUserMode,
    Resume,
    Connected,
    Unknown,
}

impl NodeStatus {
    /// RonDB's word for it, as `get status` sends it (`SINGLE USER MODE` has spaces).
    pub fn as_rondb(self) -> &'static str {
        match self {
            NodeStatus::NoContact => "NO_CONTACT",
            NodeStatus::NotStarted => "NOT_STARTED",
            NodeStatus::Starting => "STARTING",
            NodeStatus::Started => "STARTED",
            NodeStatus::ShuttingDown => "SHUTTING_DOWN",
            NodeStatus::Restarting => "RESTARTING",
            NodeStatus::SingleUserMode => "SINGLE USER MODE",
            NodeStatus::Resume => "RESUME",
            NodeStatus::Connected => "CONNECTED",
            NodeStatus::Unknown => "UNKNOWN",
        }
    }

    /// Reads RonDB's word; one it does not know is `Unknown`, as RonDB's own API does.
    pub fn from_rondb(s: &str) -> NodeStatus {
        [
            NodeStatus::NoContact,
            NodeStatus::NotStarted,
            NodeStatus::Starting,
            NodeStatus::Started,
            NodeStatus::ShuttingDown,
            NodeStatus::Restarting,
            NodeStatus::SingleUserMode,
            NodeStatus::Resume,
            NodeStatus::Connected,
        ]
        .into_iter()
        .find(|n| n.as_rondb() == s)
        .unwrap_or(NodeStatus::Unknown)
    }
}

impl std::fmt::Display for RonDbNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            NodeStatus::Starting | NodeStatus::ShuttingDown if self.start_phase > 0 => write!(
                f,
                "node {}: {} (phase {})",
                self.node_id,
                self.status.as_rondb(),
                self.start_phase
            ),
            _ => write!(f, "node {}: {}", self.node_id, self.status.as_rondb()),
        }
    }
}

/// A management-client command (`ndb_mgm -e`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MgmCommand {
    Activate { node_id: u32 },
    Deactivate { node_id: u32 },
    Hostname { node_id: u32, host: String },
    StartBackup { backup_id: u64 },
}

impl MgmCommand {
    /// The text passed to `ndb_mgm -e`.
    pub fn command_line(&self) -> String {
        match self {
            MgmCommand::Activate { node_id } => format!("{node_id} ACTIVATE"),
            MgmCommand::Deactivate { node_id } => format!("{node_id} DEACTIVATE"),
            MgmCommand::Hostname { node_id, host } => format!("{node_id} HOSTNAME {host}"),
            MgmCommand::StartBackup { backup_id } => {
                format!("START BACKUP {backup_id} SNAPSHOTEND WAIT COMPLETED")
            }
        }
    }
}

/// An `ndb_restore` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreRun {
    pub backup: BackupSpec,
    pub step: RestoreStep,
    pub api_node_id: u32,
    pub original_node: Option<u32>,
    pub command: Vec<String>,
}

/// Runs RonDB programs on one VM. The leader reaches a VM's runtime through its agent; every
/// call names the VM it is meant for, and an agent refuses calls meant for another VM.
#[async_trait]
pub trait ProcessRuntime: Send + Sync {
    /// Downloads and unpacks a RonDB tarball next to the installed ones.
    async fn install_software(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError>;
    /// Writes configuration files atomically.
    async fn write_files(
        &self,
        op: OpId,
        vm: &str,
        files: &[ConfigFile],
    ) -> Result<(), BackendError>;
    /// Starts the program; returns once it is started (a data node: `started` phase).
    async fn start_program(
        &self,
        op: OpId,
        vm: &str,
        spec: &ProgramSpec,
    ) -> Result<(), BackendError>;
    /// Stops the program cleanly; stopping a stopped program succeeds. `cluster_shutdown`
    /// is set when all of RonDB stops: then the last data node of a node group may stop too
    /// (otherwise RonDB refuses, as that would take the cluster down).
    async fn stop_program(
        &self,
        op: OpId,
        vm: &str,
        kind: ProgramKind,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError>;
    /// The program's state now.
    async fn status(&self, vm: &str) -> Result<ProgramStatus, BackendError>;
    /// Runs `ndb_mgm -e` against the management server on `vm`; returns the data-node ids
    /// involved for backups.
    async fn mgm_command(
        &self,
        op: OpId,
        vm: &str,
        cmd: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError>;
    /// Runs one `ndb_restore` step; the metadata step returns the backup's original node ids.
    async fn restore(&self, op: OpId, vm: &str, run: &RestoreRun)
        -> Result<Vec<u32>, BackendError>;
    /// Removes a backup from its sink.
    async fn delete_backup(
        &self,
        op: OpId,
        vm: &str,
        backup: &BackupSpec,
    ) -> Result<(), BackendError>;
    /// Restarts the agent on `vm` (RonDB programs keep running under their supervisor).
    async fn restart_agent(&self, op: OpId, vm: &str) -> Result<(), BackendError>;
    /// Downloads another agent build, checks it, swaps the binary and restarts.
    async fn upgrade_agent(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        url: &str,
    ) -> Result<(), BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rondb_status_words_read_back_as_written_and_strangers_are_unknown() {
        for s in [
            "NO_CONTACT",
            "NOT_STARTED",
            "STARTING",
            "STARTED",
            "SHUTTING_DOWN",
            "RESTARTING",
            "SINGLE USER MODE",
            "RESUME",
            "CONNECTED",
            "UNKNOWN",
        ] {
            assert_eq!(NodeStatus::from_rondb(s).as_rondb(), s);
        }
        assert_eq!(NodeStatus::from_rondb("SINGLEUSER"), NodeStatus::Unknown);
        let starting = RonDbNode {
            node_id: 3,
            status: NodeStatus::Starting,
            start_phase: 4,
        };
        assert_eq!(starting.to_string(), "node 3: STARTING (phase 4)");
    }
}
