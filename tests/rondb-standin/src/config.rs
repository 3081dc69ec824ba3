//! config.ini as `ndb_mgmd` reads it: sections, case-insensitive parameters, the checks RonDB
//! makes before it serves a configuration, and the per-node values the other programs use.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};

pub const DEFAULT_MGMD_PORT: u16 = 1186;
/// RonDB's default data node port (rondb-helm's config uses it too).
pub const DEFAULT_NDBD_PORT: u16 = 11860;
/// `NodeGroup=65536`: a data node not in a node group yet (online add).
pub const NO_NODE_GROUP: u32 = 65536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("Error line {line}: Parse error")]
    Syntax { line: usize },
    #[error("Error line {line}: Unknown section name: {name}")]
    UnknownSection { line: usize, name: String },
    #[error("Error line {line}: [{section}] Unknown parameter: {name}")]
    UnknownParameter {
        line: usize,
        section: String,
        name: String,
    },
    #[error("Error line {line}: [{section}] Illegal value '{value}' for parameter {name}")]
    IllegalValue {
        line: usize,
        section: String,
        name: String,
        value: String,
    },
    #[error("Error line {line}: [{section}] Mandatory parameter NodeId missing")]
    MissingNodeId { line: usize, section: String },
    #[error("Error line {line}: Node id {id} already used (first defined at line {first})")]
    DuplicateNodeId { line: usize, id: u32, first: usize },
    #[error("Illegal node id {id}: data node ids must be 1..=144, other node ids 1..=255")]
    IllegalNodeId { id: u32 },
    #[error("At least one data node (section [ndbd]) must be defined")]
    NoDataNodes,
    #[error("At least one management server (section [ndb_mgmd]) must be defined")]
    NoManagementServer,
    #[error("Illegal NoOfReplicas {0}: it must be 1 to 4")]
    IllegalReplicas(u32),
    #[error(
        "Nodegroup {group} has {count} data node(s), NoOfReplicas is {replicas}: every node group must have NoOfReplicas data nodes"
    )]
    NodeGroupSize {
        group: u32,
        count: usize,
        replicas: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeType {
    Ndb,
    Mgm,
    Api,
}

impl NodeType {
    /// The mgm protocol's `nodetype` number in `get nodeid`.
    pub fn wire(self) -> u32 {
        match self {
            NodeType::Ndb => 0,
            NodeType::Api => 1,
            NodeType::Mgm => 2,
        }
    }

    pub fn from_wire(n: u32) -> Option<NodeType> {
        match n {
            0 => Some(NodeType::Ndb),
            1 => Some(NodeType::Api),
            2 => Some(NodeType::Mgm),
            _ => None,
        }
    }

    /// The names `get status` and `ndb_mgm` print.
    pub fn status_name(self) -> &'static str {
        match self {
            NodeType::Ndb => "NDB",
            NodeType::Mgm => "MGM",
            NodeType::Api => "API",
        }
    }

    /// RonDB's error texts name a type this way ("configured as ndb_mgmd(MGM)").
    pub fn long_name(self) -> &'static str {
        match self {
            NodeType::Ndb => "ndbd(NDB)",
            NodeType::Mgm => "ndb_mgmd(MGM)",
            NodeType::Api => "mysqld(API)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDef {
    pub id: u32,
    pub kind: NodeType,
    /// `None`: any host may connect as this node (empty or missing `HostName`).
    pub host: Option<String>,
    /// `PortNumber` of a management server, `ServerPort` of a data node, 0 for API nodes.
    pub port: u16,
    /// Data nodes only: the node group, explicit or by config order.
    pub node_group: Option<u32>,
    pub active: bool,
    pub data_dir: String,
    /// Data nodes: `FileSystemPath` (default `DataDir`).
    pub fs_path: String,
    /// Data nodes: `BackupDataDir` (default `FileSystemPath`).
    pub backup_dir: String,
    /// Every parameter as written (section defaults merged in), in the case first seen.
    params: BTreeMap<String, (String, String)>,
    section: &'static str,
}

impl NodeDef {
    /// `ndb_<id>_fs` below `FileSystemPath`, where a data node keeps its files.
    pub fn fs_dir(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.fs_path).join(format!("ndb_{}_fs", self.id))
    }

    /// The address the node listens on or connects from, for programs that must dial it.
    pub fn ip(&self) -> Option<IpAddr> {
        resolve(self.host.as_deref()?)
    }
}

pub fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    if host == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    (host, 0)
        .to_socket_addrs()
        .ok()?
        .find(|a| a.is_ipv4())
        .map(|a| a.ip())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub nodes: BTreeMap<u32, NodeDef>,
    pub no_of_replicas: u32,
    pub name: String,
    pub generation: u32,
    /// `[ndbd default]` etc. as written, so rendering keeps what the user wrote.
    defaults: Vec<(&'static str, Vec<(String, String)>)>,
}

struct Section {
    canonical: &'static str,
    default: bool,
    line: usize,
    params: Vec<(String, String, usize)>,
}

const NDBD_PARAMS: &[&str] = &[
    "NodeId",
    "Id",
    "HostName",
    "NodeGroup",
    "NodeActive",
    "DataDir",
    "FileSystemPath",
    "BackupDataDir",
    "ServerPort",
    "NoOfReplicas",
    "TotalMemoryConfig",
    "DataMemory",
    "IndexMemory",
    "StopOnError",
    "StartPartialTimeout",
    "StartPartitionedTimeout",
    "StartNoNodegroupTimeout",
    "EnableMultithreadedBackup",
    "MaxNoOfExecutionThreads",
    "NumCPUs",
    "LockPagesInMainMemory",
    "ArbitrationTimeout",
    "HeartbeatIntervalDbDb",
    "HeartbeatIntervalDbApi",
    "TimeBetweenWatchDogCheck",
    "MaxStartFailRetries",
    "AutomaticMemoryConfig",
    "AutomaticThreadConfig",
    "RedoBuffer",
    "FragmentLogFileSize",
    "NoOfFragmentLogParts",
    "NoOfFragmentLogFiles",
    "ODirect",
    "CompressedBackup",
    "CompressedLCP",
    "MaxNoOfTables",
    "MaxNoOfAttributes",
    "MaxNoOfConcurrentOperations",
    "MaxNoOfOrderedIndexes",
    "MaxNoOfUniqueHashIndexes",
    "PartitionsPerNode",
    "ClassicFragmentation",
    "RequireEncryptedBackup",
    "EncryptedFileSystem",
    "LocationDomainId",
    "ReservedConcurrentOperations",
    "TransactionMemory",
    "SharedGlobalMemory",
    "DiskPageBufferMemory",
    "BackupLogBufferSize",
    "ExecuteOnComputer",
];
const MGMD_PARAMS: &[&str] = &[
    "NodeId",
    "Id",
    "HostName",
    "PortNumber",
    "DataDir",
    "ArbitrationRank",
    "ArbitrationDelay",
    "LogDestination",
    "NodeActive",
    "LocationDomainId",
    "HeartbeatThreshold",
    "TotalSendBufferMemory",
    "ExecuteOnComputer",
];
const API_PARAMS: &[&str] = &[
    "NodeId",
    "Id",
    "HostName",
    "ArbitrationRank",
    "ArbitrationDelay",
    "NodeActive",
    "LocationDomainId",
    "BatchSize",
    "BatchByteSize",
    "MaxScanBatchSize",
    "TotalSendBufferMemory",
    "AutoReconnect",
    "DefaultOperationRedoProblemAction",
    "ConnectBackoffMaxTime",
    "StartConnectBackoffMaxTime",
    "HeartbeatThreshold",
    "ExecuteOnComputer",
    "DefaultHashMapSize",
    "ApiVerbose",
];
const TCP_PARAMS: &[&str] = &[
    "NodeId1",
    "NodeId2",
    "HostName1",
    "HostName2",
    "SendBufferMemory",
    "ReceiveBufferMemory",
    "PreferIPVersion",
    "OverloadLimit",
    "TcpBind_INADDR_ANY",
    "Group",
    "SendSignalId",
    "Checksum",
];
const SYSTEM_PARAMS: &[&str] = &["Name", "ConfigGenerationNumber", "PrimaryMGMNode"];

/// Section names RonDB accepts (aliases included) → canonical name and `default` flag.
fn section_name(raw: &str) -> Option<(&'static str, bool)> {
    let lower = raw.trim().to_ascii_lowercase();
    let (base, default) = match lower.strip_suffix(" default") {
        Some(b) => (b.trim().to_string(), true),
        None => (lower, false),
    };
    let canonical = match base.as_str() {
        "ndbd" | "db" => "ndbd",
        "ndb_mgmd" | "mgm" => "ndb_mgmd",
        "mysqld" | "api" => "mysqld",
        "tcp" => "tcp",
        "system" => "system",
        _ => return None,
    };
    if canonical == "system" && default {
        return None;
    }
    Some((canonical, default))
}

fn known_params(section: &str) -> &'static [&'static str] {
    match section {
        "ndbd" => NDBD_PARAMS,
        "ndb_mgmd" => MGMD_PARAMS,
        "mysqld" => API_PARAMS,
        "tcp" => TCP_PARAMS,
        _ => SYSTEM_PARAMS,
    }
}

fn canonical_param(section: &str, name: &str) -> Option<&'static str> {
    known_params(section)
        .iter()
        .find(|p| p.eq_ignore_ascii_case(name))
        .copied()
}

impl ClusterConfig {
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let mut sections: Vec<Section> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                continue;
            }
            if let Some(rest) = l.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or(ConfigError::Syntax { line })?;
                let (canonical, default) =
                    section_name(name).ok_or_else(|| ConfigError::UnknownSection {
                        line,
                        name: name.trim().to_string(),
                    })?;
                sections.push(Section {
                    canonical,
                    default,
                    line,
                    params: Vec::new(),
                });
                continue;
            }
            let (k, v) = l
                .split_once('=')
                .or_else(|| l.split_once(':'))
                .ok_or(ConfigError::Syntax { line })?;
            let sec = sections.last_mut().ok_or(ConfigError::Syntax { line })?;
            let name = canonical_param(sec.canonical, k.trim()).ok_or_else(|| {
                ConfigError::UnknownParameter {
                    line,
                    section: sec.canonical.to_string(),
                    name: k.trim().to_string(),
                }
            })?;
            sec.params
                .push((name.to_string(), v.trim().to_string(), line));
        }
        Self::build(sections)
    }

    fn build(sections: Vec<Section>) -> Result<ClusterConfig, ConfigError> {
        let mut defaults: BTreeMap<&'static str, Vec<(String, String, usize)>> = BTreeMap::new();
        let mut cfg = ClusterConfig {
            nodes: BTreeMap::new(),
            no_of_replicas: 2,
            name: "RonDB".into(),
            generation: 1,
            defaults: Vec::new(),
        };
        let mut first_line: BTreeMap<u32, usize> = BTreeMap::new();
        let mut implicit_groups: Vec<u32> = Vec::new();
        for sec in sections {
            if sec.default {
                defaults
                    .entry(sec.canonical)
                    .or_default()
                    .extend(sec.params.iter().cloned());
                continue;
            }
            let kind = match sec.canonical {
                "ndbd" => NodeType::Ndb,
                "ndb_mgmd" => NodeType::Mgm,
                "mysqld" => NodeType::Api,
                "system" => {
                    for (k, v, line) in &sec.params {
                        match k.as_str() {
                            "Name" => cfg.name = v.clone(),
                            "ConfigGenerationNumber" => {
                                cfg.generation = number(v, *line, "system", k)?
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let mut params: BTreeMap<String, (String, String)> = BTreeMap::new();
            for (k, v, _) in defaults.get(sec.canonical).into_iter().flatten() {
                params.insert(k.to_ascii_lowercase(), (k.clone(), v.clone()));
            }
            for (k, v, _) in &sec.params {
                params.insert(k.to_ascii_lowercase(), (k.clone(), v.clone()));
            }
            let line_of = |name: &str| {
                sec.params
                    .iter()
                    .find(|(k, _, _)| k.eq_ignore_ascii_case(name))
                    .map(|p| p.2)
                    .unwrap_or(sec.line)
            };
            let get = |name: &str| params.get(&name.to_ascii_lowercase()).map(|p| p.1.clone());
            let id_text =
                get("NodeId")
                    .or_else(|| get("Id"))
                    .ok_or(ConfigError::MissingNodeId {
                        line: sec.line,
                        section: sec.canonical.into(),
                    })?;
            let id: u32 = number(&id_text, line_of("NodeId"), sec.canonical, "NodeId")?;
            let max = if kind == NodeType::Ndb { 144 } else { 255 };
            if id == 0 || id > max {
                return Err(ConfigError::IllegalNodeId { id });
            }
            if let Some(first) = first_line.get(&id) {
                return Err(ConfigError::DuplicateNodeId {
                    line: sec.line,
                    id,
                    first: *first,
                });
            }
            first_line.insert(id, sec.line);
            if kind == NodeType::Ndb {
                if let Some(r) = get("NoOfReplicas") {
                    cfg.no_of_replicas =
                        number(&r, line_of("NoOfReplicas"), "ndbd", "NoOfReplicas")?;
                }
            }
            let active = match get("NodeActive") {
                None => true,
                Some(v) => bool_param(&v, line_of("NodeActive"), sec.canonical, "NodeActive")?,
            };
            let host = get("HostName").filter(|h| !h.is_empty());
            let data_dir = get("DataDir").unwrap_or_else(|| ".".into());
            let fs_path = get("FileSystemPath").unwrap_or_else(|| data_dir.clone());
            let backup_dir = get("BackupDataDir").unwrap_or_else(|| fs_path.clone());
            let port = match kind {
                NodeType::Mgm => match get("PortNumber") {
                    Some(p) => number(&p, line_of("PortNumber"), "ndb_mgmd", "PortNumber")?,
                    None => DEFAULT_MGMD_PORT,
                },
                NodeType::Ndb => match get("ServerPort") {
                    Some(p) => number(&p, line_of("ServerPort"), "ndbd", "ServerPort")?,
                    None => DEFAULT_NDBD_PORT,
                },
                NodeType::Api => 0,
            };
            let node_group = match (kind, get("NodeGroup")) {
                (NodeType::Ndb, Some(g)) => {
                    Some(number(&g, line_of("NodeGroup"), "ndbd", "NodeGroup")?)
                }
                (NodeType::Ndb, None) => {
                    implicit_groups.push(id);
                    None
                }
                _ => None,
            };
            cfg.nodes.insert(
                id,
                NodeDef {
                    id,
                    kind,
                    host,
                    port,
                    node_group,
                    active,
                    data_dir,
                    fs_path,
                    backup_dir,
                    params,
                    section: sec.canonical,
                },
            );
        }
        if !(1..=4).contains(&cfg.no_of_replicas) {
            return Err(ConfigError::IllegalReplicas(cfg.no_of_replicas));
        }
        // Data nodes without NodeGroup are grouped in config order, NoOfReplicas per group,
        // after the groups given explicitly.
        let first = cfg
            .nodes
            .values()
            .filter_map(|n| n.node_group.filter(|g| *g != NO_NODE_GROUP))
            .map(|g| g + 1)
            .max()
            .unwrap_or(0);
        for (group, chunk) in (first..).zip(implicit_groups.chunks(cfg.no_of_replicas as usize)) {
            for id in chunk {
                if let Some(n) = cfg.nodes.get_mut(id) {
                    n.node_group = Some(group);
                }
            }
        }
        if !cfg.nodes.values().any(|n| n.kind == NodeType::Ndb) {
            return Err(ConfigError::NoDataNodes);
        }
        if !cfg.nodes.values().any(|n| n.kind == NodeType::Mgm) {
            return Err(ConfigError::NoManagementServer);
        }
        for (group, count) in cfg.group_sizes() {
            if group != NO_NODE_GROUP && count != cfg.no_of_replicas as usize {
                return Err(ConfigError::NodeGroupSize {
                    group,
                    count,
                    replicas: cfg.no_of_replicas,
                });
            }
        }
        cfg.defaults = defaults
            .into_iter()
            .map(|(s, ps)| (s, ps.into_iter().map(|(k, v, _)| (k, v)).collect()))
            .collect();
        Ok(cfg)
    }

    fn group_sizes(&self) -> BTreeMap<u32, usize> {
        let mut sizes = BTreeMap::new();
        for n in self.data_nodes() {
            if let Some(g) = n.node_group {
                *sizes.entry(g).or_insert(0) += 1;
            }
        }
        sizes
    }

    pub fn data_nodes(&self) -> impl Iterator<Item = &NodeDef> {
        self.nodes.values().filter(|n| n.kind == NodeType::Ndb)
    }

    /// Node groups that hold data (65536 = not in a group yet).
    pub fn node_groups(&self) -> Vec<u32> {
        self.group_sizes()
            .into_keys()
            .filter(|g| *g != NO_NODE_GROUP)
            .collect()
    }

    /// config.ini text of this configuration (what `get config` hands out and
    /// `set config_v2` takes back), with the generation in `[system]`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "[system]\nName={}\nConfigGenerationNumber={}\n",
            self.name, self.generation
        );
        for (section, params) in &self.defaults {
            let _ = writeln!(out, "[{section} default]");
            for (k, v) in params {
                let _ = writeln!(out, "{k}={v}");
            }
            let _ = writeln!(out);
        }
        for n in self.nodes.values() {
            let _ = writeln!(out, "[{}]", n.section);
            for (_, (k, v)) in n.params.iter() {
                if !k.eq_ignore_ascii_case("NodeActive")
                    && !k.eq_ignore_ascii_case("HostName")
                    && !k.eq_ignore_ascii_case("NoOfReplicas")
                {
                    let _ = writeln!(out, "{k}={v}");
                }
            }
            if let Some(h) = &n.host {
                let _ = writeln!(out, "HostName={h}");
            }
            let _ = writeln!(out, "NodeActive={}\n", u8::from(n.active));
        }
        out
    }

    /// RonDB's NodeActive flip: what `ndb_mgm`'s ACTIVATE/DEACTIVATE write back.
    pub fn set_active(&mut self, id: u32, active: bool) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.active = active;
        }
    }

    pub fn set_hostname(&mut self, id: u32, host: &str) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.host = (!host.is_empty()).then(|| host.to_string());
        }
    }

    /// The same cluster apart from the generation counter.
    pub fn same_content(&self, other: &ClusterConfig) -> bool {
        let mut a = self.clone();
        a.generation = other.generation;
        a == *other
    }
}

fn number<T: std::str::FromStr>(
    v: &str,
    line: usize,
    section: &str,
    name: &str,
) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::IllegalValue {
        line,
        section: section.into(),
        name: name.into(),
        value: v.into(),
    })
}

fn bool_param(v: &str, line: usize, section: &str, name: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "y" | "yes" | "on" => Ok(true),
        "0" | "false" | "n" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::IllegalValue {
            line,
            section: section.into(),
            name: name.into(),
            value: v.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT_STYLE: &str = "# Generated by ndb-agent; do not edit.
[ndbd default]
NoOfReplicas=2
TotalMemoryConfig=2G
ServerPort=11860
DataDir=/srv/rondb/data
FileSystemPath=/srv/rondb/data/ndb_fs
BackupDataDir=/srv/rondb/backups

[ndb_mgmd]
NodeId=65
HostName=10.0.0.5
PortNumber=1186
DataDir=/srv/rondb/mgmd
NodeActive=1

[ndbd]
NodeId=1
NodeGroup=0
HostName=10.0.0.11
NodeActive=1

[ndbd]
NodeId=2
NodeGroup=0
NodeActive=0

[mysqld]
NodeId=67
HostName=10.0.0.6
NodeActive=1
";

    #[test]
    fn reads_what_the_agent_writes() {
        let c = ClusterConfig::parse(AGENT_STYLE).unwrap();
        assert_eq!(c.no_of_replicas, 2);
        let n1 = &c.nodes[&1];
        assert_eq!(n1.kind, NodeType::Ndb);
        assert_eq!(n1.port, 11860);
        assert_eq!(
            n1.fs_dir(),
            std::path::PathBuf::from("/srv/rondb/data/ndb_fs/ndb_1_fs")
        );
        assert_eq!(n1.backup_dir, "/srv/rondb/backups");
        assert!(!c.nodes[&2].active);
        assert_eq!(c.nodes[&2].host, None);
        assert_eq!(c.nodes[&65].port, 1186);
        assert_eq!(c.node_groups(), vec![0]);
        let again = ClusterConfig::parse(&c.render()).unwrap();
        assert!(again.same_content(&c));
    }

    #[test]
    fn refuses_what_rondb_refuses() {
        let dup = AGENT_STYLE.replace("NodeId=2\n", "NodeId=1\n");
        assert!(matches!(
            ClusterConfig::parse(&dup),
            Err(ConfigError::DuplicateNodeId { id: 1, .. })
        ));
        let unknown = AGENT_STYLE.replace("NodeActive=0", "NodeActiv=0");
        assert_eq!(
            ClusterConfig::parse(&unknown).unwrap_err().to_string(),
            "Error line 26: [ndbd] Unknown parameter: NodeActiv"
        );
        let section = AGENT_STYLE.replace("[mysqld]", "[sqlnode]");
        assert!(matches!(
            ClusterConfig::parse(&section),
            Err(ConfigError::UnknownSection { .. })
        ));
        let groups = AGENT_STYLE.replace("NoOfReplicas=2", "NoOfReplicas=3");
        assert!(matches!(
            ClusterConfig::parse(&groups),
            Err(ConfigError::NodeGroupSize {
                group: 0,
                count: 2,
                replicas: 3
            })
        ));
    }

    #[test]
    fn groups_data_nodes_in_config_order_without_node_group() {
        let text = "[ndbd default]\nNoOfReplicas=2\n[ndb_mgmd]\nNodeId=49\n[ndbd]\nNodeId=1\n[ndbd]\nNodeId=2\n[ndbd]\nNodeId=3\n[ndbd]\nNodeId=4\n[api]\nNodeId=50\n";
        let c = ClusterConfig::parse(text).unwrap();
        let groups: Vec<_> = c.data_nodes().map(|n| n.node_group).collect();
        assert_eq!(groups, vec![Some(0), Some(0), Some(1), Some(1)]);
    }
}
