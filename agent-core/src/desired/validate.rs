//! The rules of `docs/desired-state.md`: on one desired state, and between the last accepted
//! one and a new one. Every rule that fails is reported, not only the first.

use super::{DesiredState, ExternalNodeType, RonDbVersion};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One broken rule: the field, the offending value(s), and the rule in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub field: String,
    /// The offending value (the new one for transitions).
    pub value: Option<String>,
    /// The last accepted value, for transition rules.
    pub old: Option<String>,
    pub rule: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, value: Option<String>, rule: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            value,
            old: None,
            rule: rule.into(),
        }
    }

    fn changed(
        field: &str,
        old: impl ToString,
        new: impl ToString,
        rule: impl Into<String>,
    ) -> Self {
        Violation {
            field: field.into(),
            value: Some(new.to_string()),
            old: Some(old.to_string()),
            rule: rule.into(),
        }
    }
}

/// RonDB's limits (ndb_limits.h): data-node ids 1..=144, all node ids up to 255.
pub const MAX_DATA_NODES: u32 = 144;
/// Largest node id of any type.
pub const MAX_NODE_ID: u32 = 255;
/// RonDB supports at most 72 node groups.
pub const MAX_NODE_GROUPS: u32 = 72;
/// Largest backup id `START BACKUP` accepts.
pub const MAX_BACKUP_ID: u64 = (1u64 << 32) - 2;

fn v(x: impl ToString) -> Option<String> {
    Some(x.to_string())
}

/// Checks the rules a desired state must satisfy on its own.
pub fn validate(d: &DesiredState) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut bad = |field: &str, value: Option<String>, rule: &str| {
        out.push(Violation::new(field, value, rule));
    };
    if d.id < 1 {
        bad("Id", v(d.id), "must be an integer >= 1");
    }
    if d.rondb_running_since > d.id {
        bad(
            "RonDBRunningSince",
            v(format!("{} (Id {})", d.rondb_running_since, d.id)),
            "must not be larger than Id (it is a logical clock of desired-state versions)",
        );
    }
    if d.ndb_agent_running_since > d.id {
        bad(
            "NdbAgentRunningSince",
            v(format!("{} (Id {})", d.ndb_agent_running_since, d.id)),
            "must not be larger than Id (it is a logical clock of desired-state versions)",
        );
    }
    if RonDbVersion::parse(&d.rondb_version).is_none() {
        bad(
            "RonDBVersion",
            v(format!("{:?}", d.rondb_version)),
            "must be a version X.Y.Z, e.g. 22.10.1",
        );
    }
    if !agent_version_ok(&d.ndb_agent_version) {
        bad(
            "NdbAgentVersion",
            v(format!("{:?}", d.ndb_agent_version)),
            "must be a dotted numeric version, e.g. 1.0",
        );
    }
    if !http_url_ok(&d.ndb_agent_download_link) {
        bad(
            "NdbAgentDownloadLink",
            v(format!("{:?}", d.ndb_agent_download_link)),
            "must be an http:// or https:// URL with a host",
        );
    }
    // RonDB tarballs may also come from this machine's disk (a local cluster, tarballs
    // built here); every VM reads the same path.
    if !http_url_ok(&d.rondb_download_link) && !file_url_ok(&d.rondb_download_link) {
        bad(
            "RonDBDownloadLink",
            v(format!("{:?}", d.rondb_download_link)),
            "must be an http:// or https:// URL with a host, or a file:/// URL with an absolute path",
        );
    }
    if !memory_ok(&d.total_memory_config) {
        bad(
            "TotalMemoryConfig",
            v(format!("{:?}", d.total_memory_config)),
            "must be a positive size like 2400M (suffix K, M, G or T)",
        );
    }
    if !(1..=3).contains(&d.max_replication_factor) {
        bad(
            "MaxReplicationFactor",
            v(d.max_replication_factor),
            "must be 1, 2 or 3",
        );
    }
    if d.active_replication_factor < 1 || d.active_replication_factor > d.max_replication_factor {
        bad(
            "ActiveReplicationFactor",
            v(format!(
                "{} (MaxReplicationFactor {})",
                d.active_replication_factor, d.max_replication_factor
            )),
            "must be between 1 and MaxReplicationFactor",
        );
    }
    if d.num_node_groups < 1 || d.num_node_groups > MAX_NODE_GROUPS {
        bad(
            "NumNodeGroups",
            v(d.num_node_groups),
            "must be between 1 and 72 (RonDB's limit)",
        );
    }
    let data_slots = u64::from(d.num_node_groups) * u64::from(d.max_replication_factor);
    if data_slots > u64::from(MAX_DATA_NODES) {
        bad(
            "NumNodeGroups",
            v(format!(
                "{} x MaxReplicationFactor {} = {data_slots}",
                d.num_node_groups, d.max_replication_factor
            )),
            "data-node slots (NumNodeGroups x MaxReplicationFactor) must be at most 144",
        );
    }
    let total = data_slots
        + u64::from(d.num_total_mgmd_slots)
        + u64::from(d.num_total_mysqld_slots)
        + u64::from(d.num_total_api_slots);
    if total > u64::from(MAX_NODE_ID) {
        bad(
            "NumTotalApiSlots",
            v(format!(
                "data {data_slots} + mgmd {} + mysqld {} + api {} = {total}",
                d.num_total_mgmd_slots, d.num_total_mysqld_slots, d.num_total_api_slots
            )),
            "all node slots together must be at most 255 (RonDB node ids are unique across types)",
        );
    }
    for (field, x) in [
        ("NumMysqldSlotsPerVm", d.num_mysqld_slots_per_vm),
        ("NumApiSlotsPerVm", d.num_api_slots_per_vm),
    ] {
        if x < 1 {
            bad(field, v(x), "must be at least 1");
        }
    }
    if d.num_managed_mgmd_vms < 1 {
        bad(
            "NumManagedMgmdVms",
            v(d.num_managed_mgmd_vms),
            "must be at least 1: the agents need a management server they run to start and change RonDB",
        );
    }
    let ext = |t: ExternalNodeType| {
        d.externally_managed_nodes
            .iter()
            .filter(|n| n.rondb_type == t)
            .count() as u64
    };
    let budgets = [
        (
            "NumTotalMgmdSlots",
            u64::from(d.num_managed_mgmd_vms),
            ext(ExternalNodeType::NdbMgm),
            d.num_total_mgmd_slots,
            "NumManagedMgmdVms",
        ),
        (
            "NumTotalMysqldSlots",
            u64::from(d.num_managed_mysqld_vms) * u64::from(d.num_mysqld_slots_per_vm),
            ext(ExternalNodeType::Mysqld),
            d.num_total_mysqld_slots,
            "NumManagedMysqldVms x NumMysqldSlotsPerVm",
        ),
        (
            "NumTotalApiSlots",
            u64::from(d.num_managed_api_vms) * u64::from(d.num_api_slots_per_vm),
            ext(ExternalNodeType::NdbApi),
            d.num_total_api_slots,
            "NumManagedApiVms x NumApiSlotsPerVm",
        ),
    ];
    for (field, managed, external, total, what) in budgets {
        if managed + external > u64::from(total) {
            bad(
                field,
                v(format!("{total} (managed {managed} + external {external})")),
                &format!(
                    "slots needed by {what} plus externally managed nodes of this type must fit in {field}"
                ),
            );
        }
    }
    let ports = [
        ("DefaultMgmdPort", d.default_mgmd_port),
        ("DefaultNdbdPort", d.default_ndbd_port),
        ("DefaultMysqldPort", d.default_mysqld_port),
    ];
    for (i, (field, p)) in ports.iter().enumerate() {
        if !(1..=65535).contains(p) {
            bad(field, v(p), "must be a port between 1 and 65535");
        }
        for (other, q) in &ports[..i] {
            if p == q {
                bad(
                    field,
                    v(p),
                    &format!(
                        "must differ from {other}; the default ports must be pairwise distinct"
                    ),
                );
            }
        }
    }
    for (i, n) in d.externally_managed_nodes.iter().enumerate() {
        let f = |s: &str| format!("ExternallyManagedNodes[{i}].{s}");
        if n.rondb_type == ExternalNodeType::NdbNdbd {
            bad(
                &f("RonDBType"),
                v("ndb_ndbd"),
                "externally managed data nodes are not supported: a data node holds node-group data that the agents must be able to restart, upgrade and move",
            );
        }
        if n.ip.is_empty() {
            if matches!(
                n.rondb_type,
                ExternalNodeType::NdbMgm | ExternalNodeType::NdbNdbd
            ) {
                bad(
                    &f("Ip"),
                    v("\"\""),
                    "an empty Ip (an open slot) is only allowed for mysqld and ndb_api",
                );
            }
        } else if !host_ok(&n.ip) {
            bad(
                &f("Ip"),
                v(format!("{:?}", n.ip)),
                "must be an IP address or a host name",
            );
        }
        if !(1..=65535).contains(&n.port) {
            bad(&f("Port"), v(n.port), "must be a port between 1 and 65535");
        }
    }
    let mut ids = BTreeSet::new();
    for (i, b) in d.single_backups.iter().enumerate() {
        if b.id < 1 || b.id > MAX_BACKUP_ID {
            bad(
                &format!("SingleBackups[{i}].Id"),
                v(b.id),
                "must be between 1 and 4294967294 (RonDB backup ids)",
            );
        }
        if !ids.insert(b.id) {
            bad(
                &format!("SingleBackups[{i}].Id"),
                v(b.id),
                "backup ids must be unique",
            );
        }
    }
    if let Some(r) = &d.restore_from_backup {
        if !ids.contains(&r.id) {
            bad(
                "RestoreFromBackup.Id",
                v(r.id),
                "must also be listed in SingleBackups, so that the backup is not deleted",
            );
        }
        if d.num_managed_mysqld_vms + d.num_managed_api_vms == 0 {
            bad(
                "RestoreFromBackup",
                v(r.id),
                "restoring needs a free API slot: set NumManagedMysqldVms or NumManagedApiVms to at least 1",
            );
        }
    }
    if d.region.trim().is_empty() {
        bad("Region", v("\"\""), "must not be empty");
    }
    if d.availability_zones.is_empty() {
        bad("AvailabilityZones", v("[]"), "must list at least one zone");
    }
    let mut zones = BTreeSet::new();
    for z in &d.availability_zones {
        if z.trim().is_empty() {
            bad(
                "AvailabilityZones",
                v("\"\""),
                "zone names must not be empty",
            );
        } else if !zones.insert(z) {
            bad(
                "AvailabilityZones",
                v(format!("{z:?}")),
                "zones must be distinct",
            );
        }
    }
    for (field, s) in [
        ("StorageGiBPerMgmdVm", d.storage_gib_per_mgmd_vm),
        ("StorageGiBPerNdbdVm", d.storage_gib_per_ndbd_vm),
        ("StorageGiBPerMysqldVm", d.storage_gib_per_mysqld_vm),
        ("StorageGiBPerApiVm", d.storage_gib_per_api_vm),
    ] {
        if s < 1 {
            bad(field, v(s), "must be at least 1 GiB");
        }
    }
    out
}

/// What the leader knows beyond the last accepted desired state, needed by transition rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransitionContext {
    /// RonDB has started at least once in this cluster (so restoring is no longer allowed).
    pub rondb_has_run: bool,
}

/// Checks the rules between the last accepted desired state and a new one.
pub fn validate_transition(
    old: &DesiredState,
    new: &DesiredState,
    ctx: TransitionContext,
) -> Vec<Violation> {
    let mut out = Vec::new();
    if new.id <= old.id {
        out.push(Violation::changed(
            "Id",
            old.id,
            new.id,
            "must be larger than the last accepted Id; this desired state is stale",
        ));
    }
    if new.rondb_running_since < old.rondb_running_since {
        out.push(Violation::changed(
            "RonDBRunningSince",
            old.rondb_running_since,
            new.rondb_running_since,
            "is a logical clock and never decreases",
        ));
    }
    if new.ndb_agent_running_since < old.ndb_agent_running_since {
        out.push(Violation::changed(
            "NdbAgentRunningSince",
            old.ndb_agent_running_since,
            new.ndb_agent_running_since,
            "is a logical clock and never decreases",
        ));
    }
    let immutable: [(&str, String, String); 11] = [
        (
            "MaxReplicationFactor",
            old.max_replication_factor.to_string(),
            new.max_replication_factor.to_string(),
        ),
        (
            "NumNodeGroups",
            old.num_node_groups.to_string(),
            new.num_node_groups.to_string(),
        ),
        (
            "NumTotalMgmdSlots",
            old.num_total_mgmd_slots.to_string(),
            new.num_total_mgmd_slots.to_string(),
        ),
        (
            "NumTotalMysqldSlots",
            old.num_total_mysqld_slots.to_string(),
            new.num_total_mysqld_slots.to_string(),
        ),
        (
            "NumTotalApiSlots",
            old.num_total_api_slots.to_string(),
            new.num_total_api_slots.to_string(),
        ),
        (
            "NumMysqldSlotsPerVm",
            old.num_mysqld_slots_per_vm.to_string(),
            new.num_mysqld_slots_per_vm.to_string(),
        ),
        (
            "NumApiSlotsPerVm",
            old.num_api_slots_per_vm.to_string(),
            new.num_api_slots_per_vm.to_string(),
        ),
        (
            "DefaultMgmdPort",
            old.default_mgmd_port.to_string(),
            new.default_mgmd_port.to_string(),
        ),
        (
            "DefaultNdbdPort",
            old.default_ndbd_port.to_string(),
            new.default_ndbd_port.to_string(),
        ),
        (
            "DefaultMysqldPort",
            old.default_mysqld_port.to_string(),
            new.default_mysqld_port.to_string(),
        ),
        ("Region", old.region.clone(), new.region.clone()),
    ];
    for (field, a, b) in immutable {
        if a != b {
            out.push(Violation::changed(
                field,
                a,
                b,
                "is immutable once accepted (node ids, ports and placement are fixed at creation)",
            ));
        }
    }
    if ctx.rondb_has_run && old.restore_from_backup != new.restore_from_backup {
        out.push(Violation::changed(
            "RestoreFromBackup",
            describe_restore(old),
            describe_restore(new),
            "may be set or changed only while RonDB has never run in this cluster",
        ));
    }
    // With one replica in the result, a restart needs a temporary peer: a replica the change
    // removes (or one lost meanwhile) cannot be relied on. Reduce replicas in a later step.
    let stays_single = new.active_replication_factor == 1;
    let serving = old.rondb_running && new.rondb_running;
    let can_surge = new.allow_requesting_temporary_vms && new.max_replication_factor >= 2;
    if stays_single && serving && !can_surge {
        let why = "with ActiveReplicationFactor 1 this is only possible online with a temporary replica VM per node group: set AllowRequestingTemporaryVms to true and MaxReplicationFactor >= 2, raise ActiveReplicationFactor first, or stop RonDB (RonDBRunning false)";
        if old.rondb_version != new.rondb_version {
            out.push(Violation::changed(
                "RonDBVersion",
                &old.rondb_version,
                &new.rondb_version,
                format!("a version change {why}"),
            ));
        }
        if new.rondb_running_since > old.rondb_running_since {
            out.push(Violation::changed(
                "RonDBRunningSince",
                old.rondb_running_since,
                new.rondb_running_since,
                format!("a rolling restart {why}"),
            ));
        }
    }
    // Data-node VMs are replaced while RonDB runs, whether or not it ran before.
    if new.active_replication_factor == 1
        && new.rondb_running
        && !can_surge
        && ndbd_vms_replaced(old, new)
    {
        let why = "with ActiveReplicationFactor 1 this is only possible with a temporary replica VM per node group (the new VM copies its data from a live replica): set AllowRequestingTemporaryVms to true and MaxReplicationFactor >= 2, or raise ActiveReplicationFactor first";
        out.push(ndbd_replacement(
            old,
            new,
            format!("replacing data-node VMs {why}"),
        ));
    }
    if !new.rondb_running && ndbd_vms_replaced(old, new) {
        out.push(ndbd_replacement(
            old,
            new,
            "data-node VMs can only be replaced while RonDB runs (a new VM copies its data from a live replica); change it together with RonDBRunning true".into(),
        ));
    }
    if !new.rondb_running {
        let had: BTreeSet<u64> = old.single_backups.iter().map(|b| b.id).collect();
        let restore = new.restore_from_backup.as_ref().map(|r| r.id);
        for (i, b) in new.single_backups.iter().enumerate() {
            if !had.contains(&b.id) && Some(b.id) != restore {
                out.push(Violation::new(
                    format!("SingleBackups[{i}].Id"),
                    v(b.id),
                    "a new backup can only be taken while RonDB runs; add it together with RonDBRunning true",
                ));
            }
        }
    }
    out
}

/// Rules for the very first desired state of a cluster, beyond [`validate`]: a stopped
/// cluster cannot take backups.
pub fn validate_first(new: &DesiredState) -> Vec<Violation> {
    let mut out = Vec::new();
    if !new.rondb_running {
        let restore = new.restore_from_backup.as_ref().map(|r| r.id);
        for (i, b) in new.single_backups.iter().enumerate() {
            if Some(b.id) != restore {
                out.push(Violation::new(
                    format!("SingleBackups[{i}].Id"),
                    v(b.id),
                    "a new backup can only be taken while RonDB runs; add it together with RonDBRunning true",
                ));
            }
        }
    }
    out
}

/// Data-node VMs must be replaced: their machine changes, or a zone they may sit in goes away.
fn ndbd_vms_replaced(old: &DesiredState, new: &DesiredState) -> bool {
    old.vm_type_ndbds != new.vm_type_ndbds
        || old.storage_gib_per_ndbd_vm != new.storage_gib_per_ndbd_vm
        || old
            .availability_zones
            .iter()
            .any(|z| !new.availability_zones.contains(z))
}

fn ndbd_replacement(old: &DesiredState, new: &DesiredState, rule: String) -> Violation {
    let show = |d: &DesiredState| {
        format!(
            "{}/{} GiB/zones {}",
            d.vm_type_ndbds,
            d.storage_gib_per_ndbd_vm,
            d.availability_zones.join(",")
        )
    };
    Violation::changed(
        "VmTypeNdbds/StorageGiBPerNdbdVm/AvailabilityZones",
        show(old),
        show(new),
        rule,
    )
}

fn describe_restore(d: &DesiredState) -> String {
    match &d.restore_from_backup {
        None => "none".into(),
        Some(r) => format!("backup {}", r.id),
    }
}

fn agent_version_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn http_url_ok(s: &str) -> bool {
    match url::Url::parse(s) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

fn file_url_ok(s: &str) -> bool {
    s.strip_prefix("file://")
        .is_some_and(|p| p.starts_with('/') && p.len() > 1 && !p.contains("/../"))
}

fn memory_ok(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix_len = s.len() - digits.len();
    suffix_len <= 1
        && !digits.is_empty()
        && digits.len() <= 15
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

fn host_ok(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
