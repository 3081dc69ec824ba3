//! The desired-state API: the one document a user writes to say what the cluster should be.
//!
//! Field names are the public contract (PascalCase, exactly as in `docs/desired-state.md`),
//! so existing managed-RonDB users' files keep working. Parsing reports every problem at once;
//! see [`parse`] and [`validate`].

mod parse;
mod validate;

pub use parse::{did_you_mean, parse, ParseError, MAX_DOCUMENT_BYTES, MAX_NESTING_DEPTH};
pub use validate::{validate, validate_first, validate_transition, TransitionContext, Violation};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// One version of what the user wants the cluster to look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    #[serde(rename = "Id")]
    pub id: u64,
    #[serde(rename = "RonDBRunning")]
    pub rondb_running: bool,
    #[serde(rename = "RonDBRunningSince")]
    pub rondb_running_since: u64,
    #[serde(rename = "RonDBVersion")]
    pub rondb_version: String,
    #[serde(rename = "RonDBDownloadLink")]
    pub rondb_download_link: String,
    #[serde(rename = "NdbAgentRunningSince")]
    pub ndb_agent_running_since: u64,
    #[serde(rename = "NdbAgentVersion")]
    pub ndb_agent_version: String,
    #[serde(rename = "NdbAgentDownloadLink")]
    pub ndb_agent_download_link: String,
    #[serde(rename = "SingleBackups", default)]
    pub single_backups: Vec<BackupSpec>,
    #[serde(
        rename = "RestoreFromBackup",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub restore_from_backup: Option<BackupSpec>,
    #[serde(rename = "TotalMemoryConfig")]
    pub total_memory_config: String,
    #[serde(rename = "MaxReplicationFactor")]
    pub max_replication_factor: u32,
    #[serde(rename = "ActiveReplicationFactor")]
    pub active_replication_factor: u32,
    #[serde(rename = "NumNodeGroups")]
    pub num_node_groups: u32,
    #[serde(rename = "NumTotalMgmdSlots")]
    pub num_total_mgmd_slots: u32,
    #[serde(rename = "NumTotalMysqldSlots")]
    pub num_total_mysqld_slots: u32,
    #[serde(rename = "NumTotalApiSlots")]
    pub num_total_api_slots: u32,
    #[serde(rename = "NumMysqldSlotsPerVm", default = "one")]
    pub num_mysqld_slots_per_vm: u32,
    #[serde(rename = "NumApiSlotsPerVm", default = "one")]
    pub num_api_slots_per_vm: u32,
    #[serde(rename = "NumManagedMgmdVms", default = "one")]
    pub num_managed_mgmd_vms: u32,
    #[serde(rename = "NumManagedMysqldVms")]
    pub num_managed_mysqld_vms: u32,
    #[serde(rename = "NumManagedApiVms")]
    pub num_managed_api_vms: u32,
    #[serde(rename = "ExternallyManagedNodes", default)]
    pub externally_managed_nodes: Vec<ExternalNode>,
    #[serde(rename = "AllowRequestingTemporaryVms")]
    pub allow_requesting_temporary_vms: bool,
    /// How long a VM that is down (stopped machine, dead agent) is waited for before it is
    /// replaced, which happens only while its node group keeps a started replica.
    #[serde(rename = "VmDownGraceSeconds", default = "default_vm_down_grace")]
    pub vm_down_grace_seconds: u64,
    #[serde(rename = "Region")]
    pub region: String,
    #[serde(rename = "AvailabilityZones")]
    pub availability_zones: Vec<String>,
    #[serde(rename = "VmTypeMgmds")]
    pub vm_type_mgmds: VmType,
    #[serde(rename = "VmTypeNdbds")]
    pub vm_type_ndbds: VmType,
    #[serde(rename = "VmTypeMysqlds")]
    pub vm_type_mysqlds: VmType,
    #[serde(rename = "VmTypeApis")]
    pub vm_type_apis: VmType,
    #[serde(rename = "StorageGiBPerMgmdVm")]
    pub storage_gib_per_mgmd_vm: u32,
    #[serde(rename = "StorageGiBPerNdbdVm")]
    pub storage_gib_per_ndbd_vm: u32,
    #[serde(rename = "StorageGiBPerMysqldVm")]
    pub storage_gib_per_mysqld_vm: u32,
    #[serde(rename = "StorageGiBPerApiVm")]
    pub storage_gib_per_api_vm: u32,
    #[serde(rename = "DefaultMgmdPort")]
    pub default_mgmd_port: u32,
    #[serde(rename = "DefaultNdbdPort")]
    pub default_ndbd_port: u32,
    #[serde(rename = "DefaultMysqldPort")]
    pub default_mysqld_port: u32,
}

fn one() -> u32 {
    1
}

/// Five minutes: a host reboot or a restarted container is back well within it, and a VM
/// that is really lost is replaced soon enough.
pub const DEFAULT_VM_DOWN_GRACE_SECONDS: u64 = 300;

fn default_vm_down_grace() -> u64 {
    DEFAULT_VM_DOWN_GRACE_SECONDS
}

/// Every top-level field name, in documentation order. Used for "did you mean" hints and
/// kept honest by a test that compares it with what serde writes.
pub const FIELDS: &[&str] = &[
    "Id",
    "RonDBRunning",
    "RonDBRunningSince",
    "RonDBVersion",
    "RonDBDownloadLink",
    "NdbAgentRunningSince",
    "NdbAgentVersion",
    "NdbAgentDownloadLink",
    "SingleBackups",
    "RestoreFromBackup",
    "TotalMemoryConfig",
    "MaxReplicationFactor",
    "ActiveReplicationFactor",
    "NumNodeGroups",
    "NumTotalMgmdSlots",
    "NumTotalMysqldSlots",
    "NumTotalApiSlots",
    "NumMysqldSlotsPerVm",
    "NumApiSlotsPerVm",
    "NumManagedMgmdVms",
    "NumManagedMysqldVms",
    "NumManagedApiVms",
    "ExternallyManagedNodes",
    "AllowRequestingTemporaryVms",
    "VmDownGraceSeconds",
    "Region",
    "AvailabilityZones",
    "VmTypeMgmds",
    "VmTypeNdbds",
    "VmTypeMysqlds",
    "VmTypeApis",
    "StorageGiBPerMgmdVm",
    "StorageGiBPerNdbdVm",
    "StorageGiBPerMysqldVm",
    "StorageGiBPerApiVm",
    "DefaultMgmdPort",
    "DefaultNdbdPort",
    "DefaultMysqldPort",
];

/// Fields a document may leave out; everything else in [`FIELDS`] is required.
pub const OPTIONAL_FIELDS: &[&str] = &[
    "SingleBackups",
    "RestoreFromBackup",
    "NumMysqldSlotsPerVm",
    "NumApiSlotsPerVm",
    "NumManagedMgmdVms",
    "ExternallyManagedNodes",
    "VmDownGraceSeconds",
];

/// Field names of a backup entry (`SingleBackups[i]`, `RestoreFromBackup`).
pub const BACKUP_FIELDS: &[&str] = &["Id", "SinkType", "SinkParameters"];
/// Field names of an `ExternallyManagedNodes[i]` entry.
pub const EXTERNAL_NODE_FIELDS: &[&str] = &["RonDBType", "Ip", "Port"];

/// A backup the cluster should hold (or restore from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    #[serde(rename = "Id")]
    pub id: u64,
    #[serde(rename = "SinkType")]
    pub sink_type: SinkType,
    #[serde(rename = "SinkParameters", default)]
    pub sink_parameters: BTreeMap<String, serde_json::Value>,
}

/// Where backup files live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    Docker,
    Local,
    S3,
}

/// A RonDB node that exists outside the agents' control but needs a slot in config.ini.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalNode {
    #[serde(rename = "RonDBType")]
    pub rondb_type: ExternalNodeType,
    #[serde(rename = "Ip")]
    pub ip: String,
    #[serde(rename = "Port")]
    pub port: u32,
}

/// The RonDB program type of an externally managed node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ExternalNodeType {
    #[serde(rename = "ndb_mgm")]
    NdbMgm,
    #[serde(rename = "ndb_ndbd")]
    NdbNdbd,
    #[serde(rename = "mysqld")]
    Mysqld,
    #[serde(rename = "ndb_api")]
    NdbApi,
}

/// Machine size of a VM; maps to container limits or a cloud instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmType {
    Mini,
    Small,
    Medium,
    Large,
    Xlarge,
    Xxlarge,
}

impl VmType {
    /// All sizes, smallest first.
    pub const ALL: [VmType; 6] = [
        VmType::Mini,
        VmType::Small,
        VmType::Medium,
        VmType::Large,
        VmType::Xlarge,
        VmType::Xxlarge,
    ];

    /// Memory in MiB and CPUs a VM of this size gets (container limits in local setups).
    pub fn resources(self) -> (u64, f64) {
        match self {
            VmType::Mini => (1024, 0.5),
            VmType::Small => (2048, 1.0),
            VmType::Medium => (4096, 2.0),
            VmType::Large => (8192, 4.0),
            VmType::Xlarge => (16384, 8.0),
            VmType::Xxlarge => (32768, 16.0),
        }
    }

    /// The spelling used in the desired state.
    pub fn as_str(self) -> &'static str {
        match self {
            VmType::Mini => "mini",
            VmType::Small => "small",
            VmType::Medium => "medium",
            VmType::Large => "large",
            VmType::Xlarge => "xlarge",
            VmType::Xxlarge => "xxlarge",
        }
    }
}

impl fmt::Display for VmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A RonDB version `X.Y.Z`, ordered numerically so upgrades and downgrades can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RonDbVersion(pub u32, pub u32, pub u32);

impl RonDbVersion {
    /// Parses `X.Y.Z` (three non-negative integers); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        // One pass over the bytes: the planner and the safety rules parse every VM's version
        // each round. Each part is 1 to 9 ASCII digits, so it always fits a u32.
        let mut parts = [0u32; 3];
        let mut i = 0;
        let mut len = 0;
        for c in s.bytes() {
            if c == b'.' {
                if len == 0 || i == 2 {
                    return None;
                }
                i += 1;
                len = 0;
            } else if c.is_ascii_digit() && len < 9 {
                parts[i] = parts[i] * 10 + u32::from(c - b'0');
                len += 1;
            } else {
                return None;
            }
        }
        if i != 2 || len == 0 {
            return None;
        }
        Some(RonDbVersion(parts[0], parts[1], parts[2]))
    }
}

impl fmt::Display for RonDbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl DesiredState {
    /// Node-group count times active replicas: the data nodes that should run.
    pub fn active_data_nodes(&self) -> u32 {
        self.num_node_groups * self.active_replication_factor
    }

    /// The one-line description `ndb-agent validate` prints.
    pub fn summary(&self) -> String {
        format!(
            "desired state {}: {} node group(s) x {} replica(s) (max {}), {} MySQLd VM(s), {} API VM(s), {} management VM(s), RonDB {}, agent {}, RonDB {}",
            self.id,
            self.num_node_groups,
            self.active_replication_factor,
            self.max_replication_factor,
            self.num_managed_mysqld_vms,
            self.num_managed_api_vms,
            self.num_managed_mgmd_vms,
            self.rondb_version,
            self.ndb_agent_version,
            if self.rondb_running { "running" } else { "stopped" }
        )
    }

    /// A complete valid desired state, used as a template for tests and for filling in
    /// unparseable fields while collecting all errors of a document.
    pub fn example() -> Self {
        DesiredState {
            id: 1,
            rondb_running: true,
            rondb_running_since: 1,
            rondb_version: "22.10.1".into(),
            rondb_download_link: "http://artifacts:8080/rondb-22.10.1.tar.gz".into(),
            ndb_agent_running_since: 1,
            ndb_agent_version: "1.0".into(),
            ndb_agent_download_link: "http://artifacts:8080/ndb-agent-1.0.tar.gz".into(),
            single_backups: vec![],
            restore_from_backup: None,
            total_memory_config: "2400M".into(),
            max_replication_factor: 3,
            active_replication_factor: 2,
            num_node_groups: 2,
            num_total_mgmd_slots: 2,
            num_total_mysqld_slots: 8,
            num_total_api_slots: 8,
            num_mysqld_slots_per_vm: 1,
            num_api_slots_per_vm: 1,
            num_managed_mgmd_vms: 1,
            num_managed_mysqld_vms: 2,
            num_managed_api_vms: 1,
            externally_managed_nodes: vec![],
            allow_requesting_temporary_vms: true,
            vm_down_grace_seconds: DEFAULT_VM_DOWN_GRACE_SECONDS,
            region: "local".into(),
            availability_zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
            vm_type_mgmds: VmType::Mini,
            vm_type_ndbds: VmType::Small,
            vm_type_mysqlds: VmType::Mini,
            vm_type_apis: VmType::Mini,
            storage_gib_per_mgmd_vm: 5,
            storage_gib_per_ndbd_vm: 20,
            storage_gib_per_mysqld_vm: 5,
            storage_gib_per_api_vm: 5,
            default_mgmd_port: 1186,
            default_ndbd_port: 11860,
            default_mysqld_port: 3306,
        }
    }
}

#[cfg(test)]
mod tests;
