//! Events: the only way the cluster state changes. Applying an event is pure and
//! deterministic, so replicas that apply the same log hold the same state, and a new leader
//! resumes exactly where the old one stopped.

use super::{slot_layout, Backup, ClusterState, ReconciliationState, Role, Vm};
use crate::actions::{Action, ActionKind, RestoreStep};
use crate::backend::{ProgramStatus, VmInfo, VmState};
use crate::desired::DesiredState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What a finished action reported beyond success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    VmCreated(VmInfo),
    /// A VM that was down runs again (its address may have changed).
    VmStarted(VmInfo),
    BackupTaken {
        data_nodes: Vec<u32>,
    },
    RestoreMetaRead {
        original_nodes: Vec<u32>,
    },
}

/// One change to the cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A validated desired state becomes the one being reconciled.
    Accepted(DesiredState),
    /// A validated desired state arrived while working; it waits (the latest wins).
    Queued(DesiredState),
    /// The pending desired state became invalid before it could be accepted.
    PendingDropped {
        id: u64,
        reason: String,
    },
    ActionStarted(Action),
    ActionSucceeded {
        op_id: u64,
        outcome: Outcome,
    },
    ActionFailed {
        op_id: u64,
        error: String,
        /// The world changed under the action (its VM is gone): not an attempt that counts
        /// towards the retry limit.
        #[serde(default)]
        drift: bool,
    },
    /// What the backends report now; VMs that vanished are lost, programs that stopped died.
    Observed {
        vms: Vec<VmInfo>,
        programs: BTreeMap<String, ProgramStatus>,
    },
    ReconciliationChanged {
        state: ReconciliationState,
        error: Option<String>,
    },
    /// A VM stayed down past the grace period while its node group kept a started replica:
    /// it is no longer waited for. It leaves the cluster state (so it is replaced like a
    /// lost VM) and is deleted at the provider, which still lists it.
    VmAbandoned {
        vm: String,
        reason: String,
    },
    /// The agent on `vm` leads now (its reconciler writes the events that follow); recorded
    /// at every election, also when the same agent leads again.
    LeaderChanged {
        vm: String,
    },
}

impl ClusterState {
    /// Applies one event. Never fails: events were checked before they were logged.
    pub fn apply(&mut self, event: &Event) {
        self.apply_inner(event);
        if self.vms.values().any(|v| v.temporary) {
            self.settle_all_temporary_flags();
        }
    }

    /// Whether applying `event` to this state may change what the configuration files are
    /// made of: the accepted desired state, the slots, and which VMs exist at which address.
    /// Fingerprints and files kept from before such an event are stale; across any other
    /// event they still hold (see `planner::ConfigCache`). Conservative: an event is
    /// listed as harmless only if [`ClusterState::apply`] touches none of those inputs.
    pub fn changes_config_inputs(&self, event: &Event) -> bool {
        use ActionKind::*;
        match event {
            Event::Accepted(_) | Event::VmAbandoned { .. } => true,
            // Down flags and program states are no inputs; a VM the observation removes is
            // (its address leaves the files). Most observations that are recorded only tell
            // of a program that stopped or started, and keep every file as it was.
            Event::Observed { vms, .. } => self.observation_loses_vm(vms),
            Event::Queued(_)
            | Event::PendingDropped { .. }
            | Event::ActionStarted(_)
            | Event::ActionFailed { .. }
            | Event::LeaderChanged { .. }
            | Event::ReconciliationChanged { .. } => false,
            Event::ActionSucceeded { op_id, .. } => match self.in_flight.get(op_id) {
                // Not in flight: applying it changes nothing.
                None => false,
                Some(a) => match &a.kind {
                    CreateVm { .. }
                    | DeleteVm { .. }
                    | StartVm { .. }
                    | ActivateNode { .. }
                    | DeactivateNode { .. }
                    | SetHostname { .. } => true,
                    InstallSoftware { .. }
                    | WriteConfig { .. }
                    | StartMgmd { .. }
                    | StopMgmd { .. }
                    | StartDataNode { .. }
                    | StopDataNode { .. }
                    | StartMysqld { .. }
                    | StopMysqld { .. }
                    | StartApi { .. }
                    | StopApi { .. }
                    | CreateBackup { .. }
                    | DeleteBackup { .. }
                    | RestoreBackup { .. }
                    | RestartAgent { .. }
                    | UpgradeAgent { .. } => false,
                },
            },
        }
    }

    fn apply_inner(&mut self, event: &Event) {
        match event {
            Event::Accepted(d) => {
                if self.slots.is_empty() {
                    self.slots = slot_layout(d).into_iter().map(|s| (s.node_id, s)).collect();
                }
                self.reserve_external_slots(d);
                if self.pending.as_ref().is_some_and(|p| p.id <= d.id) {
                    self.pending = None;
                }
                self.restore.backup_id = d.restore_from_backup.as_ref().map(|r| r.id);
                self.accepted = Some(d.clone());
                self.reconciliation = ReconciliationState::WORKING_TOWARDS_DESIRED_STATE;
                self.failures.clear();
                self.last_error = None;
            }
            Event::Queued(d) => self.pending = Some(d.clone()),
            Event::PendingDropped { id, reason } => {
                if self.pending.as_ref().is_some_and(|p| p.id == *id) {
                    self.pending = None;
                }
                self.last_error = Some(format!("pending desired state {id} dropped: {reason}"));
            }
            Event::ActionStarted(a) => {
                self.next_op_id = self.next_op_id.max(a.op_id + 1);
                if let ActionKind::CreateVm { seq, .. } = &a.kind {
                    self.next_vm_seq = self.next_vm_seq.max(seq + 1);
                }
                self.in_flight.insert(a.op_id, a.clone());
            }
            Event::ActionSucceeded { op_id, outcome } => {
                if let Some(a) = self.in_flight.remove(op_id) {
                    // The key is formatted only when there is a failure it could clear.
                    if !self.failures.is_empty() {
                        self.failures.remove(&a.kind.retry_key());
                    }
                    self.completed_actions += 1;
                    self.apply_success(&a.kind, outcome);
                }
            }
            Event::ActionFailed {
                op_id,
                error,
                drift,
            } => {
                if let Some(a) = self.in_flight.remove(op_id) {
                    if *drift {
                        if !self.failures.is_empty() {
                            self.failures.remove(&a.kind.retry_key());
                        }
                    } else {
                        *self.failures.entry(a.kind.retry_key()).or_insert(0) += 1;
                    }
                    // A failed creation may have made the VM all the same (the provider died
                    // after making it, or its answer was lost). The retry makes a VM of
                    // another name, so this one is deleted, never leaked; deleting a VM that
                    // does not exist succeeds.
                    if let ActionKind::CreateVm { vm, role, .. } = &a.kind {
                        self.abandoned.insert(vm.clone(), *role);
                    }
                    if let ActionKind::StartMgmd { vm, .. }
                    | ActionKind::StartDataNode { vm, .. }
                    | ActionKind::StartMysqld { vm, .. }
                    | ActionKind::StartApi { vm, .. } = &a.kind
                    {
                        if let Some(v) = self.vms.get_mut(vm) {
                            v.start_unconfirmed = true;
                        }
                    }
                    self.last_error = Some(format!("{a} failed: {error}"));
                }
            }
            Event::Observed { vms, programs } => {
                self.apply_observation(vms, programs);
                self.world_seen = true;
            }
            Event::LeaderChanged { vm } => {
                self.leader_vm = Some(vm.clone());
                self.world_seen = false;
            }
            Event::VmAbandoned { vm, reason } => {
                if let Some(gone) = self.vms.remove(vm) {
                    tracing::warn!(vm = %vm, role = %gone.role, %reason, "VM given up; it will be deleted and replaced");
                    self.abandoned.insert(vm.clone(), gone.role);
                    self.settle_temporary_flags(gone.role, gone.node_group);
                }
            }
            Event::ReconciliationChanged { state, error } => {
                self.reconciliation = *state;
                if *state == ReconciliationState::WORKING_TOWARDS_DESIRED_STATE {
                    self.failures.clear();
                }
                if error.is_some() || *state != ReconciliationState::ERROR_STATE {
                    self.last_error = error.clone();
                }
            }
        }
    }

    /// Slots for externally managed nodes follow the accepted list.
    fn reserve_external_slots(&mut self, d: &DesiredState) {
        for fresh in slot_layout(d) {
            if let Some(slot) = self.slots.get_mut(&fresh.node_id) {
                if fresh.external {
                    *slot = fresh;
                } else if slot.external {
                    // No longer reserved: free again.
                    slot.external = false;
                    slot.active = false;
                    slot.host = None;
                }
            }
        }
    }

    fn apply_success(&mut self, kind: &ActionKind, outcome: &Outcome) {
        use ActionKind::*;
        match kind {
            CreateVm {
                vm,
                role,
                zone,
                vm_type,
                storage_gib,
                temporary,
                node_group,
                agent_version,
                agent_clock,
                seq,
            } => {
                let address = match outcome {
                    Outcome::VmCreated(info) => info.address.clone(),
                    _ => vm.clone(),
                };
                let home = match outcome {
                    Outcome::VmCreated(info) => {
                        if info.host_dir.is_some() {
                            self.host_dir = info.host_dir.clone();
                        }
                        if info.backup_dir.is_some() {
                            self.backup_dir = info.backup_dir.clone();
                        }
                        info.home.clone()
                    }
                    _ => None,
                };
                self.vms.insert(
                    vm.clone(),
                    Vm {
                        name: vm.clone(),
                        role: *role,
                        zone: zone.clone(),
                        vm_type: *vm_type,
                        storage_gib: *storage_gib,
                        temporary: *temporary,
                        node_group: *node_group,
                        address,
                        agent_version: agent_version.clone(),
                        agent_clock: *agent_clock,
                        installed: BTreeSet::new(),
                        config_hash: None,
                        running: false,
                        version: None,
                        clock: 0,
                        has_data: false,
                        home,
                        mgmd_initialized: false,
                        start_unconfirmed: false,
                        seq: *seq,
                        down: false,
                    },
                );
            }
            DeleteVm { vm, .. } => {
                self.abandoned.remove(vm);
                if let Some(gone) = self.vms.remove(vm) {
                    self.settle_temporary_flags(gone.role, gone.node_group);
                }
            }
            StartVm { vm, .. } => {
                if let Some(v) = self.vms.get_mut(vm) {
                    v.down = false;
                    if let Outcome::VmStarted(info) = outcome {
                        v.address = info.address.clone();
                        v.home = info.home.clone();
                    }
                }
            }
            InstallSoftware { vm, version, .. } => {
                if let Some(v) = self.vms.get_mut(vm) {
                    v.installed.insert(version.clone());
                }
            }
            WriteConfig {
                vm, config_hash, ..
            } => {
                if let Some(v) = self.vms.get_mut(vm) {
                    v.config_hash = Some(*config_hash);
                }
            }
            StartMgmd {
                vm, version, clock, ..
            } => {
                if let Some(v) = self.vms.get_mut(vm) {
                    v.running = true;
                    v.version = Some(version.clone());
                    v.clock = *clock;
                    v.mgmd_initialized = true;
                }
            }
            StartDataNode {
                vm,
                version,
                clock,
                node_group,
                ..
            } => {
                self.started_groups.insert(*node_group);
                if let Some(v) = self.vms.get_mut(vm) {
                    v.running = true;
                    v.version = Some(version.clone());
                    v.clock = *clock;
                    v.has_data = true;
                }
                self.rondb_has_run = true;
            }
            StartMysqld {
                vm, version, clock, ..
            }
            | StartApi {
                vm, version, clock, ..
            } => {
                if let Some(v) = self.vms.get_mut(vm) {
                    v.running = true;
                    v.version = Some(version.clone());
                    v.clock = *clock;
                }
            }
            StopMgmd { vm, .. } | StopDataNode { vm, .. } | StopMysqld { vm } | StopApi { vm } => {
                if let Some(v) = self.vms.get_mut(vm) {
                    v.running = false;
                }
            }
            ActivateNode { node_id, .. } => {
                if let Some(s) = self.slots.get_mut(node_id) {
                    s.active = true;
                }
            }
            DeactivateNode { node_id, vm, .. } => {
                if let Some(s) = self.slots.get_mut(node_id) {
                    s.active = false;
                }
                if let Some(v) = vm.as_ref().and_then(|vm| self.vms.get_mut(vm)) {
                    // DEACTIVATE stops the node; its file system is stale from now on.
                    if v.role == Role::Ndbd {
                        v.running = false;
                        v.has_data = false;
                    }
                }
            }
            SetHostname { node_id, vm, .. } => {
                if let Some(s) = self.slots.get_mut(node_id) {
                    s.host = Some(vm.clone());
                }
            }
            CreateBackup { backup_id, .. } => {
                let sink = self
                    .accepted
                    .as_ref()
                    .and_then(|d| d.single_backups.iter().find(|b| b.id == *backup_id))
                    .cloned();
                if let Some(sink) = sink {
                    let data_nodes = match outcome {
                        Outcome::BackupTaken { data_nodes } => data_nodes.clone(),
                        _ => vec![],
                    };
                    self.backups.insert(
                        *backup_id,
                        Backup {
                            id: *backup_id,
                            sink,
                            data_nodes,
                        },
                    );
                }
            }
            DeleteBackup { backup_id, .. } => {
                self.backups.remove(backup_id);
            }
            RestoreBackup {
                backup_id,
                step,
                node_id,
                ..
            } => match step {
                RestoreStep::Meta => {
                    if let Outcome::RestoreMetaRead { original_nodes } = outcome {
                        self.restore.original_nodes = Some(original_nodes.clone());
                    }
                }
                RestoreStep::Data => {
                    if let Some(n) = node_id {
                        self.restore.data_done.insert(*n);
                    }
                }
                RestoreStep::RebuildIndexes => {
                    self.restore.done = true;
                    // The restored backup is now one this cluster holds and manages.
                    let sink = self
                        .accepted
                        .as_ref()
                        .and_then(|d| d.restore_from_backup.clone());
                    if let Some(sink) = sink {
                        let data_nodes = self.restore.original_nodes.clone().unwrap_or_default();
                        self.backups.insert(
                            *backup_id,
                            Backup {
                                id: *backup_id,
                                sink,
                                data_nodes,
                            },
                        );
                    }
                }
            },
            RestartAgent { vm, .. } => {
                let clock = self.accepted.as_ref().map(|d| d.ndb_agent_running_since);
                if let (Some(v), Some(c)) = (self.vms.get_mut(vm), clock) {
                    v.agent_clock = c;
                }
            }
            UpgradeAgent { vm, version, .. } => {
                let clock = self.accepted.as_ref().map(|d| d.ndb_agent_running_since);
                if let Some(v) = self.vms.get_mut(vm) {
                    v.agent_version = version.clone();
                    if let Some(c) = clock {
                        v.agent_clock = v.agent_clock.max(c);
                    }
                }
            }
        }
    }

    fn settle_all_temporary_flags(&mut self) {
        let groups: BTreeSet<(Role, Option<u32>)> = self
            .vms
            .values()
            .filter(|v| v.temporary)
            .map(|v| (v.role, v.node_group))
            .collect();
        for (role, ng) in groups {
            self.settle_temporary_flags(role, ng);
        }
    }

    /// A surge VM that outlived the VM it replaced is a regular member from then on.
    fn settle_temporary_flags(&mut self, role: Role, node_group: Option<u32>) {
        let Some(d) = self.accepted.as_ref() else {
            return;
        };
        if role == Role::Bootstrap {
            return;
        }
        let target = super::target_vms(d, role);
        let member = |v: &Vm| v.role == role && v.node_group == node_group;
        // Counted, then cleared in place: no names are copied.
        if self.vms.values().filter(|v| member(v)).count() <= target {
            for v in self.vms.values_mut().filter(|v| member(v)) {
                v.temporary = false;
            }
        }
    }

    /// The VMs of the state that an observation listing `vms` removes: those the provider
    /// no longer lists and no action in flight works on (an action records its own result).
    fn lost_in_observation<'s>(
        &'s self,
        vms: &'s [VmInfo],
    ) -> impl Iterator<Item = &'s String> + 's {
        let busy: BTreeSet<&str> = self
            .in_flight
            .values()
            .filter_map(|a| a.kind.vm())
            .collect();
        let present: BTreeSet<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        self.vms
            .keys()
            .filter(move |n| !present.contains(n.as_str()) && !busy.contains(n.as_str()))
    }

    /// Whether applying an observation listing `vms` removes a VM from the state.
    fn observation_loses_vm(&self, vms: &[VmInfo]) -> bool {
        self.lost_in_observation(vms).next().is_some()
    }

    fn apply_observation(&mut self, vms: &[VmInfo], programs: &BTreeMap<String, ProgramStatus>) {
        let lost: Vec<String> = self.lost_in_observation(vms).cloned().collect();
        for name in lost {
            if let Some(gone) = self.vms.remove(&name) {
                tracing::warn!(vm = %name, role = %gone.role, "VM lost; it will be replaced");
            }
        }
        // Program states apply to busy VMs too: an action in flight records its own result
        // after this, and a program that died under it must not be trusted meanwhile.
        for info in vms {
            if let Some(v) = self.vms.get_mut(&info.name) {
                let down = info.state == VmState::Down;
                if down && !v.down {
                    tracing::warn!(vm = %info.name, role = %v.role, "VM is down; it will be started again");
                }
                v.down = down;
                if down {
                    // Its programs went down with it.
                    v.running = false;
                    v.start_unconfirmed = false;
                }
            }
        }
        for (name, v) in self.vms.iter_mut() {
            if let Some(p) = programs.get(name) {
                if v.down {
                    continue;
                }
                if v.running && !p.running {
                    tracing::warn!(vm = %name, role = %v.role, "RonDB program died; it will be restarted");
                }
                v.running = p.running;
                v.start_unconfirmed = false;
                if p.version.is_some() {
                    v.version = p.version.clone();
                }
            }
        }
    }
}
