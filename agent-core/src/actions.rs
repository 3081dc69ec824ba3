//! Actions: the one thing the leader asks a backend to do. Each carries an operation id so a
//! retry after a leader change never does a thing twice.

use crate::desired::VmType;
use crate::model::Role;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A started action: its operation id and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub op_id: u64,
    #[serde(flatten)]
    pub kind: ActionKind,
}

/// Which step of a restore an `ndb_restore` run performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreStep {
    /// `--restore-meta --disable-indexes`: table definitions; reports the original node ids.
    Meta,
    /// `--restore-data -n <original node id>`: the rows one original data node held.
    Data,
    /// `--rebuild-indexes`: recreate ordered indexes once all data is in.
    RebuildIndexes,
}

/// What an action does. Field names follow the `simulate` output contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ActionKind {
    CreateVm {
        vm: String,
        role: Role,
        zone: String,
        vm_type: VmType,
        storage_gib: u32,
        temporary: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        node_group: Option<u32>,
        agent_version: String,
        agent_clock: u64,
        seq: u64,
    },
    DeleteVm {
        vm: String,
        role: Role,
    },
    /// Brings a VM that is down back up (its agent, and with it its disks).
    StartVm {
        vm: String,
        role: Role,
    },
    InstallSoftware {
        vm: String,
        role: Role,
        version: String,
    },
    WriteConfig {
        vm: String,
        role: Role,
        config_hash: u64,
    },
    StartMgmd {
        vm: String,
        node_id: u32,
        version: String,
        initial: bool,
        clock: u64,
    },
    StopMgmd {
        vm: String,
        node_id: u32,
    },
    StartDataNode {
        vm: String,
        node_id: u32,
        node_group: u32,
        version: String,
        initial: bool,
        clock: u64,
    },
    StopDataNode {
        vm: String,
        node_id: u32,
        node_group: u32,
    },
    StartMysqld {
        vm: String,
        node_ids: Vec<u32>,
        version: String,
        clock: u64,
    },
    StopMysqld {
        vm: String,
    },
    StartApi {
        vm: String,
        node_ids: Vec<u32>,
        version: String,
        clock: u64,
    },
    StopApi {
        vm: String,
    },
    /// Marks a slot active. `via` is the management server that runs the command; `None`
    /// means no RonDB runs and the change goes into config.ini before the next start.
    ActivateNode {
        node_id: u32,
        vm: String,
        role: Role,
        via: Option<String>,
    },
    /// Stops the node (if it runs) and marks its slot inactive.
    DeactivateNode {
        node_id: u32,
        vm: Option<String>,
        role: Role,
        via: Option<String>,
    },
    /// Binds an inactive slot to a VM.
    SetHostname {
        node_id: u32,
        vm: String,
        role: Role,
        via: Option<String>,
    },
    CreateBackup {
        backup_id: u64,
        via: String,
    },
    DeleteBackup {
        backup_id: u64,
        via: String,
    },
    RestoreBackup {
        backup_id: u64,
        vm: String,
        step: RestoreStep,
        /// The API slot `ndb_restore` connects with.
        api_node_id: u32,
        /// For the data step: the original data node whose rows are restored.
        #[serde(skip_serializing_if = "Option::is_none")]
        node_id: Option<u32>,
    },
    RestartAgent {
        vm: String,
        role: Role,
    },
    UpgradeAgent {
        vm: String,
        role: Role,
        version: String,
    },
}

/// What an action holds while it runs: at most one action per VM, slot and backup at a time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Vm(String),
    Slot(u32),
    Backup(u64),
}

impl ActionKind {
    /// The action's name in logs and the simulate output.
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::CreateVm { .. } => "CreateVm",
            ActionKind::DeleteVm { .. } => "DeleteVm",
            ActionKind::StartVm { .. } => "StartVm",
            ActionKind::InstallSoftware { .. } => "InstallSoftware",
            ActionKind::WriteConfig { .. } => "WriteConfig",
            ActionKind::StartMgmd { .. } => "StartMgmd",
            ActionKind::StopMgmd { .. } => "StopMgmd",
            ActionKind::StartDataNode { .. } => "StartDataNode",
            ActionKind::StopDataNode { .. } => "StopDataNode",
            ActionKind::StartMysqld { .. } => "StartMysqld",
            ActionKind::StopMysqld { .. } => "StopMysqld",
            ActionKind::StartApi { .. } => "StartApi",
            ActionKind::StopApi { .. } => "StopApi",
            ActionKind::ActivateNode { .. } => "ActivateNode",
            ActionKind::DeactivateNode { .. } => "DeactivateNode",
            ActionKind::SetHostname { .. } => "SetHostname",
            ActionKind::CreateBackup { .. } => "CreateBackup",
            ActionKind::DeleteBackup { .. } => "DeleteBackup",
            ActionKind::RestoreBackup { .. } => "RestoreBackup",
            ActionKind::RestartAgent { .. } => "RestartAgent",
            ActionKind::UpgradeAgent { .. } => "UpgradeAgent",
        }
    }

    /// The VM the action runs on or changes, if any.
    pub fn vm(&self) -> Option<&str> {
        use ActionKind::*;
        match self {
            CreateVm { vm, .. }
            | DeleteVm { vm, .. }
            | StartVm { vm, .. }
            | InstallSoftware { vm, .. }
            | WriteConfig { vm, .. }
            | StartMgmd { vm, .. }
            | StopMgmd { vm, .. }
            | StartDataNode { vm, .. }
            | StopDataNode { vm, .. }
            | StartMysqld { vm, .. }
            | StopMysqld { vm }
            | StartApi { vm, .. }
            | StopApi { vm }
            | ActivateNode { vm, .. }
            | SetHostname { vm, .. }
            | RestoreBackup { vm, .. }
            | RestartAgent { vm, .. }
            | UpgradeAgent { vm, .. } => Some(vm),
            DeactivateNode { vm, .. } => vm.as_deref(),
            CreateBackup { .. } | DeleteBackup { .. } => None,
        }
    }

    /// Whether the action is carried out by the agent on its VM (so it waits while that VM
    /// is down). VM-level actions go to the provider; slot changes go through a management
    /// server.
    pub fn needs_agent_of_vm(&self) -> bool {
        use ActionKind::*;
        !matches!(
            self,
            CreateVm { .. }
                | DeleteVm { .. }
                | StartVm { .. }
                | ActivateNode { .. }
                | DeactivateNode { .. }
                | SetHostname { .. }
                | CreateBackup { .. }
                | DeleteBackup { .. }
        )
    }

    /// What the action holds while it runs. Binding or activating a slot only holds the
    /// slot, so software can install on the VM meanwhile.
    pub fn subjects(&self) -> Vec<Subject> {
        let mut out = Vec::with_capacity(2);
        if let Some(vm) = self.held_vm() {
            out.push(Subject::Vm(vm.to_string()));
        }
        out.extend(self.held_item());
        out
    }

    /// The VM among [`ActionKind::subjects`], without copying its name (the planner asks
    /// for every proposal).
    pub fn held_vm(&self) -> Option<&str> {
        use ActionKind::*;
        self.vm()
            .filter(|_| !matches!(self, ActivateNode { .. } | SetHostname { .. }))
    }

    /// The slot or backup among [`ActionKind::subjects`].
    pub fn held_item(&self) -> Option<Subject> {
        use ActionKind::*;
        match self {
            ActivateNode { node_id, .. }
            | DeactivateNode { node_id, .. }
            | SetHostname { node_id, .. } => Some(Subject::Slot(*node_id)),
            CreateBackup { backup_id, .. } | DeleteBackup { backup_id, .. } => {
                Some(Subject::Backup(*backup_id))
            }
            _ => None,
        }
    }

    /// Key that identifies "the same action" across retries, for counting failures.
    pub fn retry_key(&self) -> String {
        use ActionKind::*;
        match self {
            CreateVm {
                role, node_group, ..
            } => format!("CreateVm/{role}/{node_group:?}"),
            RestoreBackup { step, node_id, .. } => format!("RestoreBackup/{step:?}/{node_id:?}"),
            CreateBackup { backup_id, .. } | DeleteBackup { backup_id, .. } => {
                format!("{}/{backup_id}", self.name())
            }
            ActivateNode { node_id, .. }
            | DeactivateNode { node_id, .. }
            | SetHostname { node_id, .. } => format!("{}/{node_id}", self.name()),
            other => format!("{}/{}", other.name(), other.vm().unwrap_or("-")),
        }
    }

    /// Whether the action takes a running data node (or its whole VM) out of service.
    pub fn disrupts_data_node(&self) -> bool {
        use ActionKind::*;
        matches!(
            self,
            StopDataNode { .. }
                | StartDataNode { .. }
                | DeactivateNode {
                    role: Role::Ndbd,
                    ..
                }
        ) || matches!(
            self,
            DeleteVm {
                role: Role::Ndbd,
                ..
            }
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.op_id, self.kind.name())?;
        if let Some(vm) = self.kind.vm() {
            write!(f, " on {vm}")?;
        }
        match &self.kind {
            ActionKind::StartDataNode {
                node_id,
                initial,
                version,
                ..
            } => {
                write!(
                    f,
                    " (node {node_id}, {version}{})",
                    if *initial { ", --initial" } else { "" }
                )
            }
            ActionKind::StopDataNode { node_id, .. }
            | ActionKind::StopMgmd { node_id, .. }
            | ActionKind::ActivateNode { node_id, .. }
            | ActionKind::DeactivateNode { node_id, .. }
            | ActionKind::SetHostname { node_id, .. } => write!(f, " (node {node_id})"),
            ActionKind::StartMgmd {
                node_id, version, ..
            } => write!(f, " (node {node_id}, {version})"),
            ActionKind::InstallSoftware { version, .. } => write!(f, " (RonDB {version})"),
            ActionKind::CreateBackup { backup_id, .. }
            | ActionKind::DeleteBackup { backup_id, .. } => write!(f, " (backup {backup_id})"),
            ActionKind::RestoreBackup {
                backup_id,
                step,
                node_id,
                ..
            } => {
                write!(
                    f,
                    " (backup {backup_id}, {step:?}{})",
                    node_id.map(|n| format!(", node {n}")).unwrap_or_default()
                )
            }
            ActionKind::UpgradeAgent { version, .. } => write!(f, " (agent {version})"),
            ActionKind::CreateVm {
                zone,
                vm_type,
                temporary,
                ..
            } => {
                write!(
                    f,
                    " ({vm_type} in {zone}{})",
                    if *temporary { ", temporary" } else { "" }
                )
            }
            _ => Ok(()),
        }
    }
}
