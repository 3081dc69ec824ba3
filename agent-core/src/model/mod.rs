//! The cluster state: everything the leader knows about the cluster, changed only by
//! [`Event`]s so that it can be replicated (Raft) and replayed.

mod config;
mod events;
mod layout;

pub use config::{
    config_fingerprint, config_fingerprint_with, files_for, render_api_cnf, render_config_ini,
    render_my_cnf, render_rdrs_config, ConfigFile, RONDB_HOME,
};
pub use events::{Event, Outcome};
pub use layout::{slot_layout, SlotLayout};

use crate::actions::Action;
use crate::desired::{DesiredState, VmType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a VM is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Mgmd,
    Ndbd,
    Mysqld,
    Api,
    Bootstrap,
}

impl Role {
    /// The roles that run a RonDB program, in start (upgrade) order.
    pub const RONDB: [Role; 4] = [Role::Mgmd, Role::Ndbd, Role::Mysqld, Role::Api];

    /// Upgrade phase: management servers, then data nodes, then MySQLds and API hosts.
    pub fn phase(self) -> u8 {
        match self {
            Role::Mgmd => 0,
            Role::Ndbd => 1,
            Role::Mysqld | Role::Api => 2,
            Role::Bootstrap => 3,
        }
    }

    /// Every role, for parsing.
    pub const ALL: [Role; 5] = [
        Role::Mgmd,
        Role::Ndbd,
        Role::Mysqld,
        Role::Api,
        Role::Bootstrap,
    ];

    /// The one spelling of a role everywhere it is written (serde, labels, logs, status).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mgmd => "mgmd",
            Role::Ndbd => "ndbd",
            Role::Mysqld => "mysqld",
            Role::Api => "api",
            Role::Bootstrap => "bootstrap",
        }
    }
}

/// A role name that is none of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; known roles: mgmd, ndbd, mysqld, api, bootstrap")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three states the leader reports, with the names users already know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum ReconciliationState {
    #[default]
    AT_DESIRED_STATE,
    WORKING_TOWARDS_DESIRED_STATE,
    ERROR_STATE,
}

impl fmt::Display for ReconciliationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReconciliationState::AT_DESIRED_STATE => "AT_DESIRED_STATE",
            ReconciliationState::WORKING_TOWARDS_DESIRED_STATE => "WORKING_TOWARDS_DESIRED_STATE",
            ReconciliationState::ERROR_STATE => "ERROR_STATE",
        })
    }
}

/// The machine type and storage a VM of `role` should have.
pub fn machine_spec(d: &DesiredState, role: Role) -> (VmType, u32) {
    match role {
        Role::Mgmd => (d.vm_type_mgmds, d.storage_gib_per_mgmd_vm),
        Role::Ndbd => (d.vm_type_ndbds, d.storage_gib_per_ndbd_vm),
        Role::Mysqld => (d.vm_type_mysqlds, d.storage_gib_per_mysqld_vm),
        Role::Api | Role::Bootstrap => (d.vm_type_apis, d.storage_gib_per_api_vm),
    }
}

/// How many VMs of `role` the agents keep (for data nodes: per node group). The bootstrap
/// VM is not managed.
pub fn target_vms(d: &DesiredState, role: Role) -> usize {
    (match role {
        Role::Mgmd => d.num_managed_mgmd_vms,
        Role::Ndbd => d.active_replication_factor,
        Role::Mysqld => d.num_managed_mysqld_vms,
        Role::Api => d.num_managed_api_vms,
        Role::Bootstrap => 0,
    }) as usize
}

/// A node id reserved in config.ini.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub node_id: u32,
    pub kind: Role,
    pub node_group: Option<u32>,
    /// `NodeActive=1` in the configuration RonDB uses.
    pub active: bool,
    /// The VM name (managed) or host (external) the slot is bound to; `None` = never bound.
    pub host: Option<String>,
    /// Reserved for an externally managed node.
    pub external: bool,
}

/// One machine of the cluster, as the leader knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub role: Role,
    pub zone: String,
    pub vm_type: VmType,
    pub storage_gib: u32,
    /// Requested for a while only (a temporary replica); removed when no longer needed.
    pub temporary: bool,
    /// Data-node VMs belong to one node group for their whole life.
    pub node_group: Option<u32>,
    pub address: String,
    pub agent_version: String,
    /// The `NdbAgentRunningSince` value the agent was last (re)started for.
    pub agent_clock: u64,
    /// RonDB versions whose tarball is installed.
    pub installed: BTreeSet<String>,
    /// Hash of the configuration files last written (config.ini / my.cnf).
    pub config_hash: Option<u64>,
    /// Whether the VM's RonDB program runs.
    pub running: bool,
    /// Version of the running (or last run) program.
    pub version: Option<String>,
    /// The `RonDBRunningSince` value the program was last started for.
    pub clock: u64,
    /// Data node: a file system for its slot exists (a start without `--initial` is possible).
    pub has_data: bool,
    /// Management server: its configuration database exists (restart with `--reload`).
    pub mgmd_initialized: bool,
    /// Order of creation; names are never reused.
    pub seq: u64,
    /// The provider lists the VM as down (stopped machine, dead agent): its programs do not
    /// run, its disks are kept, and it is started again rather than replaced.
    #[serde(default)]
    pub down: bool,
    /// See [`crate::backend::VmInfo::home`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// A start of its program failed, and the program may run all the same (a start that
    /// timed out) until the VM's agent tells. Meanwhile nothing may assume it does not run:
    /// a slot changed in config.ini behind a running management server is never loaded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start_unconfirmed: bool,
}

impl Vm {
    /// Where RonDB lives on this VM.
    pub fn home(&self) -> &str {
        self.home.as_deref().unwrap_or(RONDB_HOME)
    }

    /// The address RonDB's servers on this VM bind to: its own when it shares a host.
    pub fn bind_address(&self) -> &str {
        if self.home.is_some() {
            &self.address
        } else {
            "0.0.0.0"
        }
    }
}

/// A backup this cluster holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub id: u64,
    pub sink: crate::desired::BackupSpec,
    /// Data-node ids of the cluster that took it (needed to restore it).
    pub data_nodes: Vec<u32>,
}

/// Progress of the one restore a cluster may do, on its first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestoreProgress {
    pub backup_id: Option<u64>,
    /// Original data-node ids found in the backup by the metadata step.
    pub original_nodes: Option<Vec<u32>>,
    pub data_done: BTreeSet<u32>,
    pub done: bool,
}

/// Everything the leader knows. Changed only through [`ClusterState::apply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    pub accepted: Option<DesiredState>,
    pub pending: Option<DesiredState>,
    pub reconciliation: ReconciliationState,
    pub last_error: Option<String>,
    /// Consecutive failures per action key; reaching the limit means `ERROR_STATE`.
    pub failures: BTreeMap<String, u32>,
    pub vms: BTreeMap<String, Vm>,
    pub slots: BTreeMap<u32, Slot>,
    pub in_flight: BTreeMap<u64, Action>,
    pub next_op_id: u64,
    pub next_vm_seq: u64,
    pub backups: BTreeMap<u64, Backup>,
    pub restore: RestoreProgress,
    /// A data node has started at least once: the cluster exists and holds data.
    pub rondb_has_run: bool,
    /// Node groups that have had a started data node: they hold data from then on, so a
    /// replica may start empty only by copying from a started peer.
    #[serde(default)]
    pub started_groups: BTreeSet<u32>,
    pub completed_actions: u64,
    /// The VM whose agent leads (agent restarts and upgrades do it last).
    #[serde(default)]
    pub leader_vm: Option<String>,
    /// The leader named in `leader_vm` has looked at the world since it took over. Until
    /// then the reconciliation state on record is a previous leader's word, which a whole
    /// cluster restart may have made stale: it is not reported as the truth.
    #[serde(default)]
    pub world_seen: bool,
    /// See [`crate::backend::VmInfo::host_dir`]: where data nodes keep their files when the
    /// cluster's VMs share one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dir: Option<String>,
    /// See [`crate::backend::VmInfo::backup_dir`]: the backup sink as every VM sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<String>,
    /// VMs given up after staying down past the grace period: no longer members, still at
    /// the provider until deleted.
    #[serde(default)]
    pub abandoned: BTreeMap<String, Role>,
}

impl ClusterState {
    /// VMs of one role, in name order.
    pub fn vms_of(&self, role: Role) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(move |v| v.role == role)
    }

    /// Active slots bound to `vm`.
    pub fn active_slots_of<'a>(&'a self, vm: &'a str) -> impl Iterator<Item = &'a Slot> + 'a {
        self.slots
            .values()
            .filter(move |s| s.active && !s.external && s.host.as_deref() == Some(vm))
    }

    /// The management servers' addresses, for connect strings.
    pub fn mgmd_addresses(&self, port: u32) -> Vec<String> {
        let mut out: Vec<String> = self
            .slots
            .values()
            .filter(|s| s.kind == Role::Mgmd && s.active)
            .filter_map(|s| match &s.host {
                Some(h) if s.external => Some(format!("{h}:{port}")),
                Some(h) => self.vms.get(h).map(|v| format!("{}:{port}", v.address)),
                None => None,
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod role_names {
    use super::Role;

    /// Labels, logs, `vm.json` and the Raft membership all spell a role the same way.
    #[test]
    fn every_role_parses_back_from_its_one_name_and_serde_agrees() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
            let json = serde_json::to_value(r).unwrap_or_default();
            assert_eq!(json, serde_json::json!(r.as_str()));
        }
        let e = "ndbmtd".parse::<Role>().unwrap_err();
        assert!(e.to_string().contains("known roles"), "{e}");
    }
}
