//! What still differs between the cluster and the desired state. Empty means
//! `AT_DESIRED_STATE`; when the planner has nothing left to do but this is not empty, the
//! reconciliation is stuck and the text says why.

use super::ConfigCache;
use crate::desired::{DesiredState, VmType};
use crate::model::{machine_spec, target_vms, ClusterState, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One way the cluster still differs from the desired state. Typed, so that code can tell
/// them apart (a node group that lost its data is not a VM still starting); the text is for
/// people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A node group that held data has no running data node: nothing is left to copy from.
    NodeGroupLost {
        node_group: u32,
    },
    /// Every replica of a node group is on a VM that is down: they are waited for, never
    /// replaced.
    NodeGroupDown {
        node_group: u32,
        vms: Vec<String>,
    },
    /// The provider lists the VM as down; it is being started again.
    VmDown {
        vm: String,
    },
    /// A VM given up after its grace period is still at the provider.
    AbandonedVm {
        vm: String,
    },
    VmCount {
        role: Role,
        have: usize,
        want: usize,
    },
    SlotsHeld {
        vm: String,
        have: usize,
        want: usize,
    },
    NodeGroupVms {
        node_group: u32,
        have: usize,
        want: usize,
    },
    NodeGroupSlots {
        node_group: u32,
        have: usize,
        want: usize,
    },
    ReplicasShareZone {
        node_group: u32,
    },
    NoActiveSlot {
        vm: String,
    },
    SlotWithoutVm {
        node_id: u32,
    },
    MachineSpec {
        vm: String,
        vm_type: VmType,
        storage_gib: u32,
        zone: String,
        want_type: VmType,
        want_storage_gib: u32,
    },
    TemporaryVm {
        vm: String,
    },
    NotInstalled {
        vm: String,
        version: String,
    },
    ConfigOutdated {
        vm: String,
    },
    NotRunning {
        vm: String,
        role: Role,
    },
    WrongVersion {
        vm: String,
        have: Option<String>,
        want: String,
    },
    NotRestarted {
        vm: String,
        since: u64,
    },
    StillRunning {
        vm: String,
        role: Role,
    },
    AgentOutdated {
        vm: String,
        version: String,
        clock: u64,
        want_version: String,
        want_clock: u64,
    },
    RestoreUnfinished,
    BackupMissing {
        id: u64,
    },
    BackupNotDeleted {
        id: u64,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Difference::*;
        match self {
            NodeGroupLost { node_group: g } => write!(f, "node group {g} lost every replica that held its data; the agents cannot rebuild it: restore a backup into a new cluster (RestoreFromBackup), and keep ActiveReplicationFactor >= 2 to survive a VM loss"),
            NodeGroupDown { node_group: g, vms } => write!(f, "node group {g}: every replica is on a VM that is down ({}); the agents start them again and never replace a whole node group; if they cannot come back, restore a backup into a new cluster (RestoreFromBackup)", vms.join(", ")),
            VmDown { vm } => write!(f, "{vm}: VM is down; it is being started again"),
            AbandonedVm { vm } => write!(f, "{vm}: given up after staying down past VmDownGraceSeconds; not deleted yet"),
            VmCount { role, have, want } => write!(f, "{role}: {have} VM(s), want {want}"),
            SlotsHeld { vm, have, want } => write!(f, "{vm}: holds {have} active slot(s), want {want}"),
            NodeGroupVms { node_group: g, have, want } => write!(f, "node group {g}: {have} VM(s), want {want}"),
            NodeGroupSlots { node_group: g, have, want } => write!(f, "node group {g}: {have} active slot(s), want {want}"),
            ReplicasShareZone { node_group: g } => write!(f, "node group {g}: replicas share a zone while another zone has none"),
            NoActiveSlot { vm } => write!(f, "{vm}: holds no active slot"),
            SlotWithoutVm { node_id } => write!(f, "slot {node_id}: active without a VM"),
            MachineSpec { vm, vm_type, storage_gib, zone, want_type, want_storage_gib } => write!(f, "{vm}: {vm_type} {storage_gib} GiB in {zone}, want {want_type} {want_storage_gib} GiB in one of the zones"),
            TemporaryVm { vm } => write!(f, "{vm}: temporary VM still exists"),
            NotInstalled { vm, version } => write!(f, "{vm}: RonDB {version} not installed"),
            ConfigOutdated { vm } => write!(f, "{vm}: configuration files out of date"),
            NotRunning { vm, role } => write!(f, "{vm}: {role} not running"),
            WrongVersion { vm, have, want } => write!(f, "{vm}: runs {}, want {want}", have.as_deref().unwrap_or("?")),
            NotRestarted { vm, since } => write!(f, "{vm}: not restarted since {since}"),
            StillRunning { vm, role } => write!(f, "{vm}: {role} still running"),
            AgentOutdated { vm, version, clock, want_version, want_clock } => write!(f, "{vm}: agent {version} (clock {clock}), want {want_version} (clock {want_clock})"),
            RestoreUnfinished => write!(f, "restore from backup not finished"),
            BackupMissing { id } => write!(f, "backup {id} not taken"),
            BackupNotDeleted { id } => write!(f, "backup {id} not deleted"),
        }
    }
}

/// Everything that still differs, the most serious first; empty = at the desired state.
pub fn diff(d: &DesiredState, s: &ClusterState) -> Vec<Difference> {
    diff_with(d, s, &mut ConfigCache::default())
}

/// [`diff`], with the files' fingerprints taken from (and added to) `cache`, which must hold
/// only fingerprints of this state (see [`ConfigCache`]).
pub fn diff_with(d: &DesiredState, s: &ClusterState, cache: &mut ConfigCache) -> Vec<Difference> {
    let mut out = Vec::new();
    // Active slots per VM ([`ClusterState::active_slots_of`]), counted in one walk of the
    // slots rather than one walk per VM.
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for x in s.slots.values().filter(|x| x.active && !x.external) {
        if let Some(h) = &x.host {
            *held.entry(h.as_str()).or_default() += 1;
        }
    }
    let held = |vm: &str| held.get(vm).copied().unwrap_or(0);
    // A node group that held data and has no running data node left cannot be recovered
    // by the agents (nothing to copy from): say so first, with what to do.
    if d.rondb_running {
        let serving = s.vms_of(Role::Ndbd).any(|v| v.running);
        for g in &s.started_groups {
            let alive = s
                .vms_of(Role::Ndbd)
                .any(|v| v.running && v.node_group == Some(*g));
            let down: Vec<String> = s
                .vms_of(Role::Ndbd)
                .filter(|v| v.down && v.node_group == Some(*g))
                .map(|v| v.name.clone())
                .collect();
            if !alive && !down.is_empty() {
                out.push(Difference::NodeGroupDown {
                    node_group: *g,
                    vms: down,
                });
            } else if (serving && !alive) || super::node_group_lost(s, *g) {
                out.push(Difference::NodeGroupLost { node_group: *g });
            }
        }
    }
    for v in s.vms.values().filter(|v| v.down) {
        out.push(Difference::VmDown { vm: v.name.clone() });
    }
    for vm in s.abandoned.keys() {
        out.push(Difference::AbandonedVm { vm: vm.clone() });
    }
    for (role, k) in [
        (Role::Mgmd, 1usize),
        (Role::Mysqld, d.num_mysqld_slots_per_vm as usize),
        (Role::Api, d.num_api_slots_per_vm as usize),
    ] {
        let target = target_vms(d, role);
        let n = s.vms_of(role).count();
        if n != target {
            out.push(Difference::VmCount {
                role,
                have: n,
                want: target,
            });
        }
        for v in s.vms_of(role) {
            let held = held(&v.name);
            if held != k {
                out.push(Difference::SlotsHeld {
                    vm: v.name.clone(),
                    have: held,
                    want: k,
                });
            }
        }
    }
    for g in 0..d.num_node_groups {
        let members: Vec<_> = s
            .vms_of(Role::Ndbd)
            .filter(|v| v.node_group == Some(g))
            .collect();
        let want = target_vms(d, Role::Ndbd);
        if members.len() != want {
            out.push(Difference::NodeGroupVms {
                node_group: g,
                have: members.len(),
                want,
            });
        }
        let active = s
            .slots
            .values()
            .filter(|x| x.node_group == Some(g) && x.active)
            .count();
        if active != want {
            out.push(Difference::NodeGroupSlots {
                node_group: g,
                have: active,
                want,
            });
        }
        if d.rondb_running {
            let mut zones: Vec<&str> = members.iter().map(|v| v.zone.as_str()).collect();
            zones.sort();
            zones.dedup();
            if zones.len() < members.len().min(d.availability_zones.len()) {
                out.push(Difference::ReplicasShareZone { node_group: g });
            }
        }
        for v in &members {
            if held(&v.name) != 1 {
                out.push(Difference::NoActiveSlot { vm: v.name.clone() });
            }
        }
    }
    for x in s.slots.values().filter(|x| x.active && !x.external) {
        if x.host.as_ref().is_none_or(|h| !s.vms.contains_key(h)) {
            out.push(Difference::SlotWithoutVm { node_id: x.node_id });
        }
    }
    for v in s.vms.values() {
        let (t, st) = machine_spec(d, v.role);
        if v.vm_type != t || v.storage_gib != st || !d.availability_zones.contains(&v.zone) {
            out.push(Difference::MachineSpec {
                vm: v.name.clone(),
                vm_type: v.vm_type,
                storage_gib: v.storage_gib,
                zone: v.zone.clone(),
                want_type: t,
                want_storage_gib: st,
            });
        }
        if v.temporary {
            out.push(Difference::TemporaryVm { vm: v.name.clone() });
        }
        if !v.installed.contains(&d.rondb_version) {
            out.push(Difference::NotInstalled {
                vm: v.name.clone(),
                version: d.rondb_version.clone(),
            });
        }
        if matches!(v.role, Role::Mgmd | Role::Mysqld | Role::Api)
            && v.config_hash != Some(cache.fingerprint(d, s, v))
        {
            out.push(Difference::ConfigOutdated { vm: v.name.clone() });
        }
        if d.rondb_running {
            if !v.running {
                out.push(Difference::NotRunning {
                    vm: v.name.clone(),
                    role: v.role,
                });
            } else if v.version.as_deref() != Some(d.rondb_version.as_str()) {
                out.push(Difference::WrongVersion {
                    vm: v.name.clone(),
                    have: v.version.clone(),
                    want: d.rondb_version.clone(),
                });
            } else if v.clock < d.rondb_running_since {
                out.push(Difference::NotRestarted {
                    vm: v.name.clone(),
                    since: d.rondb_running_since,
                });
            }
        } else if v.running {
            out.push(Difference::StillRunning {
                vm: v.name.clone(),
                role: v.role,
            });
        }
        if v.agent_version != d.ndb_agent_version || v.agent_clock < d.ndb_agent_running_since {
            out.push(Difference::AgentOutdated {
                vm: v.name.clone(),
                version: v.agent_version.clone(),
                clock: v.agent_clock,
                want_version: d.ndb_agent_version.clone(),
                want_clock: d.ndb_agent_running_since,
            });
        }
    }
    let restore_pending = d.restore_from_backup.is_some() && !s.restore.done;
    if restore_pending && d.rondb_running {
        out.push(Difference::RestoreUnfinished);
    }
    let restore_id = d.restore_from_backup.as_ref().map(|r| r.id);
    let want: BTreeSet<u64> = d
        .single_backups
        .iter()
        .map(|b| b.id)
        .filter(|id| !(restore_pending && Some(*id) == restore_id))
        .collect();
    let have: BTreeSet<u64> = s.backups.keys().copied().collect();
    for id in want.difference(&have) {
        out.push(Difference::BackupMissing { id: *id });
    }
    for id in have.difference(&want) {
        out.push(Difference::BackupNotDeleted { id: *id });
    }
    out
}
