//! The pure planner: `plan(desired, state)` returns every action that is safe to start now.
//!
//! No I/O, no clock, no randomness. One sub-planner per concern proposes actions (machines,
//! slots, software, configuration, processes, backups and restore, agents); a shared
//! disruption budget and phase gates decide what may start now, counting actions already in
//! flight. Re-planning after any event is always correct (level-triggered).

mod agents;
mod backups;
mod diff;
mod machines;
mod processes;
mod slots;
mod software;

#[cfg(test)]
pub(crate) mod tests;

pub use diff::{diff, diff_with, Difference};

use crate::actions::{ActionKind, Subject};
use crate::desired::{DesiredState, RonDbVersion, VmType};
use crate::model::{
    config_fingerprint_with, machine_spec, target_vms, ClusterState, Role, Slot, Vm,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// Node group `g` held data once and no VM of it runs a data node or keeps its file
/// system: no replica is left to copy its rows from.
pub fn node_group_lost(s: &ClusterState, g: u32) -> bool {
    s.started_groups.contains(&g)
        && !s
            .vms_of(Role::Ndbd)
            .any(|v| v.node_group == Some(g) && (v.running || v.has_data))
}

/// [`node_group_lost`] from the planner's index: the group's members alone are read.
fn group_lost(p: &Planner, g: u32) -> bool {
    p.s.started_groups.contains(&g) && !p.group(g).any(|v| v.running || v.has_data)
}

/// Every action that is safe to start now, given the actions already in flight.
pub fn plan(d: &DesiredState, s: &ClusterState) -> Vec<ActionKind> {
    plan_with(d, s, &mut ConfigCache::default())
}

/// [`plan`], reusing what `cache` knows of the configuration files of this state and adding
/// to it. The caller must empty the cache whenever the files' inputs may have changed
/// ([`ClusterState::changes_config_inputs`]); the proposals are then the same as [`plan`]'s.
pub fn plan_with(d: &DesiredState, s: &ClusterState, cache: &mut ConfigCache) -> Vec<ActionKind> {
    let ix = VmIndex::of(s);
    let mut p = Planner::new(d, s, &ix);
    p.config = std::mem::take(cache);
    machines::plan(&mut p);
    slots::plan(&mut p);
    software::plan(&mut p);
    processes::plan(&mut p);
    backups::plan(&mut p);
    agents::plan(&mut p);
    *cache = p.config;
    p.proposals
}

/// What the configuration files of one state are made of: their fingerprints, the
/// management servers' addresses and config.ini itself. They depend only on the accepted
/// desired state, the slots and the VMs' addresses, which most events leave alone (a
/// program started, software installed, a file written), so an engine keeps them across
/// planning rounds: rendering and fingerprinting them every round was a large share of
/// planning.
#[derive(Debug, Clone, Default)]
pub struct ConfigCache {
    /// Fingerprints of the VMs' files, by what they depend on (a handful).
    hashes: Vec<(FilesOf, u64)>,
    /// The management servers' addresses, for the fingerprints.
    mgmd_addresses: Option<Vec<String>>,
    /// config.ini as rendered for the management servers.
    pub config_ini: Option<String>,
}

/// What the fingerprint of a VM's files depends on besides the state and the desired state.
#[derive(Debug, Clone)]
enum FilesOf {
    /// A management server's files (config.ini, which lists every slot) are the same for
    /// every management server with the same home: computed once for all of them.
    Mgmd { home: Option<String> },
    /// Other VMs' files name the VM's own slots.
    Vm { name: String, role: Role },
}

impl FilesOf {
    fn of(vm: &Vm) -> Self {
        match vm.role {
            Role::Mgmd => FilesOf::Mgmd {
                home: vm.home.clone(),
            },
            role => FilesOf::Vm {
                name: vm.name.clone(),
                role,
            },
        }
    }

    /// `FilesOf::of(vm)` would equal this one (compared without copying).
    fn is_of(&self, vm: &Vm) -> bool {
        match self {
            FilesOf::Mgmd { home } => vm.role == Role::Mgmd && *home == vm.home,
            FilesOf::Vm { name, role } => *role == vm.role && *name == vm.name,
        }
    }
}

impl ConfigCache {
    /// [`config_fingerprint`](crate::model::config_fingerprint) of `vm`'s files, computed
    /// once per VM (once for the management servers of one home) while the cache holds.
    pub fn fingerprint(&mut self, d: &DesiredState, s: &ClusterState, vm: &Vm) -> u64 {
        if let Some((_, h)) = self.hashes.iter().find(|(k, _)| k.is_of(vm)) {
            return *h;
        }
        let h = config_fingerprint_with(d, s, vm, &mut self.mgmd_addresses);
        self.hashes.push((FilesOf::of(vm), h));
        h
    }
}

/// The state's VMs as the sub-planners look them up, built once per round: by role, data
/// nodes by node group, and the active slots of each VM. The sub-planners walk the VMs of
/// one role or node group many times a round; walking the whole VM map for each (and
/// comparing names) was the largest share of planning.
pub(crate) struct VmIndex<'a> {
    /// Every VM, by role (in [`Role`]'s order) and by name within a role.
    by_role: Vec<&'a Vm>,
    /// The data-node VMs by node group (those without one first) and by name within a group.
    by_group: Vec<&'a Vm>,
    /// Each VM holding active slots, once, with where its slots are in `held_ids`, sorted
    /// by creation order and then name: searched by halving over integers (a search over
    /// names compared their long common prefixes at every step, the planner's costliest
    /// lookup). The name breaks ties, so a state with repeated `seq`s is still right.
    held_vms: Vec<(u64, &'a str, Range<usize>)>,
    /// Node ids of those slots, by host and in node-id order within a host.
    held_ids: Vec<u32>,
    /// Active slots bound to no VM of the state (never bound, or their VM is gone), in
    /// node-id order: found while `held` is built rather than by a lookup per slot.
    lost: Vec<&'a Slot>,
    /// The VMs whose program version is known, with that version parsed: the upgrade
    /// order is checked many times a round against the same versions.
    versions: Vec<(&'a Vm, RonDbVersion)>,
}

impl<'a> VmIndex<'a> {
    pub(crate) fn of(s: &'a ClusterState) -> Self {
        // Stable sorts: the state lists VMs by name, and that order is kept within a role
        // and a node group.
        let mut by_role: Vec<&Vm> = s.vms.values().collect();
        by_role.sort_by_key(|v| v.role);
        let mut by_group: Vec<&Vm> = Vec::with_capacity(by_role.len());
        by_group.extend(by_role.iter().copied().filter(|v| v.role == Role::Ndbd));
        by_group.sort_by_key(|v| v.node_group);
        let mut held: Vec<(&str, u32)> = Vec::with_capacity(s.slots.len());
        let mut lost = Vec::new();
        for slot in s.slots.values().filter(|x| x.active && !x.external) {
            match &slot.host {
                Some(h) => held.push((h.as_str(), slot.node_id)),
                None => lost.push(slot),
            }
        }
        // Stable: the slots of one host stay in node-id order.
        held.sort_by(|a, b| a.0.cmp(b.0));
        // Each host once, with where its slots are; and the hosts that name no VM, found by
        // one walk of both lists (both in name order).
        let mut held_vms = Vec::with_capacity(held.len());
        let mut start = 0;
        let mut vms = s.vms.values().peekable();
        for run in held.chunk_by(|a, b| a.0 == b.0) {
            let host = run[0].0;
            let slots = start..start + run.len();
            start += run.len();
            while vms.next_if(|v| v.name.as_str() < host).is_some() {}
            match vms.peek() {
                Some(v) if v.name == host => held_vms.push((v.seq, host, slots)),
                _ => lost.extend(run.iter().filter_map(|(_, id)| s.slots.get(id))),
            }
        }
        held_vms.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let held_ids = held.iter().map(|(_, id)| *id).collect();
        lost.sort_by_key(|x| x.node_id);
        let mut versions = Vec::with_capacity(s.vms.len());
        versions.extend(
            s.vms
                .values()
                .filter_map(|v| Some((v, v.version.as_deref().and_then(RonDbVersion::parse)?))),
        );
        VmIndex {
            by_role,
            by_group,
            held_vms,
            held_ids,
            lost,
            versions,
        }
    }

    /// VMs of one role, in name order.
    fn vms_of(&self, role: Role) -> &[&'a Vm] {
        let lo = self.by_role.partition_point(|v| v.role < role);
        let hi = lo + self.by_role[lo..].partition_point(|v| v.role == role);
        &self.by_role[lo..hi]
    }

    /// Data-node VMs of node group `g` (or of none), in name order.
    fn group(&self, g: Option<u32>) -> &[&'a Vm] {
        let lo = self.by_group.partition_point(|v| v.node_group < g);
        let hi = lo + self.by_group[lo..].partition_point(|v| v.node_group == g);
        &self.by_group[lo..hi]
    }

    /// Node ids of the active slots bound to `vm`, in node-id order.
    fn held(&self, vm: &Vm) -> &[u32] {
        let key = (vm.seq, vm.name.as_str());
        match self
            .held_vms
            .binary_search_by(|(seq, name, _)| (*seq, *name).cmp(&key))
        {
            Ok(i) => &self.held_ids[self.held_vms[i].2.clone()],
            Err(_) => &[],
        }
    }
}

/// The shared context of one planning round: what is locked, what is disrupted, what the
/// sub-planners already proposed.
pub(crate) struct Planner<'a> {
    pub d: &'a DesiredState,
    pub s: &'a ClusterState,
    pub proposals: Vec<ActionKind>,
    /// Slots and backups held; held VMs are in `locked_vms` alone.
    locked: BTreeSet<Subject>,
    locked_vms: BTreeSet<String>,
    /// VMs whose RonDB program is stopping, starting or being removed (in flight or proposed).
    disrupted: BTreeSet<String>,
    /// VMs the machines planner is draining for deletion this round.
    pub retiring: BTreeSet<String>,
    /// VM creations in flight or proposed, per (role, node group).
    creating: BTreeMap<(Role, Option<u32>), usize>,
    next_seq: u64,
    pub backup_active: bool,
    pub slot_change_active: bool,
    /// Configuration fingerprints, kept across rounds by the caller while they hold.
    config: ConfigCache,
    /// The version a stopped management server starts with, decided once per round (it
    /// borrows from the desired state or a VM of the state: nothing to copy).
    mgmd_version: Option<&'a str>,
    /// The state's VMs by role and node group, and the slots they hold.
    ix: &'a VmIndex<'a>,
}

impl<'a> Planner<'a> {
    fn new(d: &'a DesiredState, s: &'a ClusterState, ix: &'a VmIndex<'a>) -> Self {
        let mut p = Planner {
            d,
            s,
            proposals: Vec::new(),
            locked: BTreeSet::new(),
            locked_vms: BTreeSet::new(),
            disrupted: BTreeSet::new(),
            retiring: BTreeSet::new(),
            creating: BTreeMap::new(),
            next_seq: s.next_vm_seq,
            backup_active: false,
            slot_change_active: false,
            config: ConfigCache::default(),
            mgmd_version: None,
            ix,
        };
        for a in s.in_flight.values() {
            p.note(&a.kind);
        }
        p
    }

    fn note(&mut self, k: &ActionKind) {
        if let Some(vm) = k.held_vm() {
            if !self.locked_vms.contains(vm) {
                self.locked_vms.insert(vm.to_string());
            }
        }
        if let Some(sub) = k.held_item() {
            self.locked.insert(sub);
        }
        use ActionKind::*;
        match k {
            CreateVm {
                role, node_group, ..
            } => {
                *self.creating.entry((*role, *node_group)).or_insert(0) += 1;
            }
            StopDataNode { vm, .. }
            | StartDataNode { vm, .. }
            | StopMgmd { vm, .. }
            | StartMgmd { vm, .. }
            | StopMysqld { vm }
            | StartMysqld { vm, .. }
            | StopApi { vm }
            | StartApi { vm, .. }
            | DeleteVm { vm, .. } => {
                self.disrupted.insert(vm.clone());
            }
            DeactivateNode { vm: Some(vm), .. } => {
                self.disrupted.insert(vm.clone());
            }
            CreateBackup { .. } => self.backup_active = true,
            _ => {}
        }
        if matches!(
            k,
            ActivateNode { .. } | DeactivateNode { .. } | SetHostname { .. }
        ) {
            self.slot_change_active = true;
        }
    }

    /// Proposes an action unless something it needs is held by another action.
    pub fn propose(&mut self, k: ActionKind) -> bool {
        // The subjects of `k`, looked up without building them.
        let vm_held = k.held_vm().is_some_and(|vm| self.locked_vms.contains(vm));
        if vm_held || k.held_item().is_some_and(|sub| self.locked.contains(&sub)) {
            return false;
        }
        // Nothing runs on a VM that is down until it is started again.
        if k.needs_agent_of_vm()
            && k.vm()
                .and_then(|v| self.s.vms.get(v))
                .is_some_and(|v| v.down)
        {
            return false;
        }
        self.note(&k);
        self.proposals.push(k);
        true
    }

    pub fn is_locked_vm(&self, vm: &str) -> bool {
        self.locked_vms.contains(vm)
    }

    /// A slot is being bound to or activated on this VM.
    pub fn binding_in_flight(&self, vm: &str) -> bool {
        self.s.in_flight.values().map(|a| &a.kind).any(|k| {
            matches!(k, ActionKind::ActivateNode { vm: v, .. } | ActionKind::SetHostname { vm: v, .. } if v == vm)
        }) || self.proposals.iter().any(|k| {
            matches!(k, ActionKind::ActivateNode { vm: v, .. } | ActionKind::SetHostname { vm: v, .. } if v == vm)
        })
    }

    pub fn is_locked_slot(&self, id: u32) -> bool {
        self.locked.contains(&Subject::Slot(id))
    }

    pub fn is_locked_backup(&self, id: u64) -> bool {
        self.locked.contains(&Subject::Backup(id))
    }

    pub fn creating(&self, role: Role, ng: Option<u32>) -> usize {
        self.creating.get(&(role, ng)).copied().unwrap_or(0)
    }

    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    pub fn want_running(&self) -> bool {
        self.d.rondb_running
    }

    /// The program runs and nothing is about to stop or restart it.
    pub fn up(&self, vm: &Vm) -> bool {
        vm.running && !self.disrupted.contains(&vm.name)
    }

    pub fn is_disrupted(&self, vm: &str) -> bool {
        self.disrupted.contains(vm)
    }

    /// Holds an active slot of its node group (data nodes) or any active slot (others).
    pub fn holds_active_slot(&self, vm: &Vm) -> bool {
        !self.held(vm).is_empty()
    }

    /// Node ids of the active slots bound to a VM.
    pub fn held(&self, vm: &Vm) -> &'a [u32] {
        let ix: &'a VmIndex<'a> = self.ix;
        ix.held(vm)
    }

    /// VMs of one role, in name order (the state's [`ClusterState::vms_of`], indexed).
    pub fn vms_of(&self, role: Role) -> impl Iterator<Item = &'a Vm> + Clone + 'a {
        let ix: &'a VmIndex<'a> = self.ix;
        ix.vms_of(role).iter().copied()
    }

    /// [`Planner::vms_of`] as the index's slice.
    pub fn vms_of_slice(&self, role: Role) -> &'a [&'a Vm] {
        let ix: &'a VmIndex<'a> = self.ix;
        ix.vms_of(role)
    }

    /// [`Planner::group`] as the index's slice.
    pub fn group_slice(&self, ng: u32) -> &'a [&'a Vm] {
        let ix: &'a VmIndex<'a> = self.ix;
        ix.group(Some(ng))
    }

    /// Active slots bound to no VM of the state (see [`VmIndex`]), in node-id order.
    pub fn lost_slots(&self) -> impl Iterator<Item = &'a Slot> + 'a {
        let ix: &'a VmIndex<'a> = self.ix;
        ix.lost.iter().copied()
    }

    /// Data-node VMs in node group `ng` (or in none), in name order: a replica's peers.
    fn peers_of(&self, ng: Option<u32>) -> impl Iterator<Item = &'a Vm> + Clone + 'a {
        let ix: &'a VmIndex<'a> = self.ix;
        ix.group(ng).iter().copied()
    }

    /// Data-node VMs of a node group, in name order.
    pub fn group(&self, ng: u32) -> impl Iterator<Item = &'a Vm> + Clone + 'a {
        let ix: &'a VmIndex<'a> = self.ix;
        ix.group(Some(ng)).iter().copied()
    }

    /// Data-node VMs of a node group that hold an active slot.
    pub fn active_members(&self, ng: u32) -> impl Iterator<Item = &'a Vm> + '_ {
        self.group(ng).filter(move |v| self.holds_active_slot(v))
    }

    pub fn ng_up(&self, ng: u32) -> usize {
        self.active_members(ng).filter(|v| self.up(v)).count()
    }

    /// Every node group has a started data node: the cluster can serve.
    pub fn serving(&self) -> bool {
        (0..self.d.num_node_groups).all(|g| self.ng_up(g) >= 1)
    }

    /// A management server that runs and is not being restarted: the one `ndb_mgm -e`
    /// commands go through.
    pub fn mgmd_up(&self) -> Option<&'a Vm> {
        self.vms_of(Role::Mgmd).find(|v| {
            v.running && !self.disrupted.contains(&v.name) && !self.retiring.contains(&v.name)
        })
    }

    /// A management-server start is in flight or proposed.
    pub fn mgmd_starting(&self) -> bool {
        self.s
            .in_flight
            .values()
            .map(|a| &a.kind)
            .chain(self.proposals.iter())
            .any(|k| matches!(k, ActionKind::StartMgmd { .. }))
    }

    /// A data node runs, or may run after a start that failed (see `Vm::start_unconfirmed`).
    pub fn any_data_node_running(&self) -> bool {
        self.vms_of(Role::Ndbd)
            .any(|v| v.running || v.start_unconfirmed)
    }

    /// Where a slot change goes: `Some(Some(mgmd))` online, `Some(None)` into config.ini
    /// while no RonDB runs (or for management-server slots when no management server runs),
    /// `None` = wait.
    pub fn slot_change_via(&self, kind: Role) -> Option<Option<String>> {
        // A management server that is starting loads config.ini; a change now could be
        // overwritten by the file it reads.
        if self.mgmd_starting() {
            return None;
        }
        if let Some(m) = self.mgmd_up() {
            return Some(Some(m.name.clone()));
        }
        // Into config.ini only while no management server holds a live configuration (one
        // that is stopping could fail to stop and keep the old one).
        let mgmd_running = self
            .vms_of(Role::Mgmd)
            .any(|m| m.running || m.start_unconfirmed);
        if !mgmd_running && (!self.any_data_node_running() || kind == Role::Mgmd) {
            return Some(None);
        }
        None
    }

    pub fn spec(&self, role: Role) -> (VmType, u32) {
        machine_spec(self.d, role)
    }

    /// The VM matches its role's machine type, storage and an allowed zone, and holds no
    /// slot reserved for an externally managed node.
    pub fn conforming(&self, vm: &Vm) -> bool {
        self.spec_ok(vm) && !self.misplaced_replica(vm)
    }

    /// Machine type, storage and zone are allowed by the desired state.
    pub fn spec_ok(&self, vm: &Vm) -> bool {
        let (t, st) = self.spec(vm.role);
        vm.vm_type == t && vm.storage_gib == st && self.d.availability_zones.contains(&vm.zone)
    }

    /// A replica sharing its zone with an older replica of its node group while another
    /// zone has none: it should move so that one zone outage cannot take the group down.
    pub fn misplaced_replica(&self, vm: &Vm) -> bool {
        if vm.role != Role::Ndbd {
            return false;
        }
        // Only replicas that stay count; the ones being replaced will leave their zone.
        // Walked again rather than collected: this runs for every data node several times
        // a round, and the second walk is rare (only for a replica that shares its zone).
        let members = || self.peers_of(vm.node_group).filter(|w| self.spec_ok(w));
        // The cheap tests first; the machine spec is asked last.
        let older_same_zone = self
            .peers_of(vm.node_group)
            .any(|w| w.seq < vm.seq && w.zone == vm.zone && self.spec_ok(w));
        older_same_zone
            && self
                .d
                .availability_zones
                .iter()
                .any(|z| !members().any(|w| &w.zone == z))
    }

    /// Another replica of the node group sits in the same zone.
    pub fn shares_zone(&self, vm: &Vm) -> bool {
        vm.role == Role::Ndbd
            && self
                .peers_of(vm.node_group)
                .any(|w| w.name != vm.name && w.zone == vm.zone)
    }

    pub fn target(&self, role: Role) -> usize {
        target_vms(self.d, role)
    }

    pub fn slots_per_vm(&self, role: Role) -> usize {
        match role {
            Role::Mysqld => self.d.num_mysqld_slots_per_vm as usize,
            Role::Api => self.d.num_api_slots_per_vm as usize,
            _ => 1,
        }
    }

    /// Files are current on the VM (always true for roles without files).
    pub fn config_current(&mut self, vm: &Vm) -> bool {
        match vm.role {
            Role::Mgmd | Role::Mysqld | Role::Api => {
                vm.config_hash == Some(self.wanted_config_hash(vm))
            }
            _ => true,
        }
    }

    pub fn wanted_config_hash(&mut self, vm: &Vm) -> u64 {
        self.config.fingerprint(self.d, self.s, vm)
    }

    pub fn version(&self) -> &'a str {
        &self.d.rondb_version
    }

    /// Runs the desired version for the desired restart clock.
    pub fn current(&self, vm: &Vm) -> bool {
        vm.running
            && vm.version.as_deref() == Some(self.version())
            && vm.clock >= self.d.rondb_running_since
    }

    /// Upgrade order: every running (or restarting) program of an earlier phase runs a
    /// version at least `version`, every one of a later phase at most `version`.
    pub fn version_gate(&self, role: Role, version: &str) -> bool {
        let Some(want) = RonDbVersion::parse(version) else {
            return true;
        };
        // Programs being restarted count with the version they had: MySQLds wait until the
        // last data node is back on the new version. VMs without a known version never
        // close the gate, so only the indexed ones are read.
        let counted = |w: &Vm| w.running || self.disrupted.contains(&w.name);
        self.ix.versions.iter().all(|&(w, have)| {
            let in_order = match w.role.phase().cmp(&role.phase()) {
                std::cmp::Ordering::Less => have >= want,
                std::cmp::Ordering::Greater => have <= want,
                std::cmp::Ordering::Equal => true,
            };
            // Asked second: whether a VM counts is a lookup by name.
            in_order || !counted(w)
        })
    }

    /// The version a stopped management server starts with: the desired one, unless the
    /// upgrade order forbids it (a downgrade whose data nodes still run the newer version)
    /// and no management server runs at all; then the newest version still running, so the
    /// data nodes can be downgraded through it.
    pub fn mgmd_start_version(&mut self) -> &'a str {
        if let Some(v) = self.mgmd_version {
            return v;
        }
        let v = self.compute_mgmd_start_version();
        self.mgmd_version = Some(v);
        v
    }

    fn compute_mgmd_start_version(&self) -> &'a str {
        let v = self.version();
        if self.version_gate(Role::Mgmd, v) || self.mgmd_up().is_some() {
            return v;
        }
        self.s
            .vms
            .values()
            .filter(|w| w.running && w.role != Role::Mgmd)
            .filter_map(|w| w.version.as_deref())
            .max_by_key(|x| RonDbVersion::parse(x))
            .unwrap_or(v)
    }

    /// Restart order for a rolling restart: every active program of an earlier phase was
    /// already restarted for the desired clock.
    pub fn clock_gate(&self, role: Role) -> bool {
        let c = self.d.rondb_running_since;
        self.s
            .vms
            .values()
            .filter(|w| w.role.phase() < role.phase() && w.role != Role::Bootstrap)
            .filter(|w| self.holds_active_slot(w))
            .all(|w| w.running && w.clock >= c)
    }
}
