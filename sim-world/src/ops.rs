//! What every backend call does to the world, synchronously: [`World::begin`] draws the
//! faults and says how long the call takes; [`World::finish`] applies it at its end, refusing
//! what RonDB or the cloud would refuse. The discrete-event simulation calls the two at their
//! simulated times; the async `mock` provider and `dummy` runtime sleep in between.

use crate::{SinkBackup, World, WorldProgram, WorldVm};
use agent_core::actions::RestoreStep;
use agent_core::backend::ProgramStatus;
use agent_core::backend::{
    BackendError, ErrorKind, MgmCommand, ProgramKind, ProgramSpec, RestoreRun, VmInfo, VmSpec,
    VmState,
};
use agent_core::engine::{BackendCall, Observation};
use agent_core::model::Outcome;
use std::collections::{BTreeMap, BTreeSet};

type Work = Box<dyn FnOnce(&mut World) -> Result<Outcome, BackendError> + Send>;

/// A backend call under way in the world.
pub struct Pending {
    /// Simulated seconds until it ends.
    pub seconds: f64,
    /// The VM it runs on: gone by the end means drift.
    vm: Option<String>,
    /// Chosen to fail (an injected fault): it changes nothing.
    fail: bool,
    /// VMs not counted as live peers until it ends (their program is being stopped).
    stopping: Vec<String>,
    work: Work,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("seconds", &self.seconds)
            .field("vm", &self.vm)
            .field("fail", &self.fail)
            .finish()
    }
}

fn failed(msg: String) -> BackendError {
    BackendError::refused(msg)
}

impl World {
    /// Starts `call`: marks what it stops, draws the faults, and says how long it takes.
    pub fn begin(&mut self, call: BackendCall) -> Pending {
        let mut stopping = Vec::new();
        match &call {
            BackendCall::StopProgram { vm, .. } => stopping.push(vm.clone()),
            // DEACTIVATE stops the node's program: its VM is not a live peer meanwhile.
            BackendCall::Mgm {
                cmd: MgmCommand::Deactivate { node_id },
                ..
            } => stopping.extend(self.host_of_node(*node_id)),
            _ => {}
        }
        if let BackendCall::ConfigOnly = &call {
            // Nothing to call: the change only goes into config.ini.
            return Pending {
                seconds: 0.0,
                vm: None,
                fail: false,
                stopping,
                work: Box::new(|_| Ok(Outcome::Done)),
            };
        }
        for s in &stopping {
            self.stopping.insert(s.clone());
        }
        let fail = self.roll();
        let c = &self.cost;
        let (seconds, vm, work): (f64, Option<String>, Work) = match call {
            BackendCall::CreateVm(spec) => {
                (c.create_vm, None, Box::new(move |w| create_vm(w, spec)))
            }
            BackendCall::DeleteVm { vm } => (
                c.delete_vm,
                None,
                Box::new(move |w| {
                    w.vms.remove(&vm);
                    w.exiting.remove(&vm);
                    Ok(Outcome::Done)
                }),
            ),
            BackendCall::StartVm { vm } => (
                c.start_vm,
                None,
                Box::new(move |w| match w.vms.get_mut(&vm) {
                    Some(v) => {
                        v.info.state = VmState::Running;
                        Ok(Outcome::VmStarted(v.info.clone()))
                    }
                    None => Err(BackendError::vm_gone(vm)),
                }),
            ),
            BackendCall::InstallSoftware { vm, version, .. } => (
                c.install_software,
                Some(vm.clone()),
                Box::new(move |w| {
                    if let Some(v) = w.vms.get_mut(&vm) {
                        v.installed.insert(version);
                    }
                    Ok(Outcome::Done)
                }),
            ),
            BackendCall::WriteFiles { vm, files } => (
                c.write_config,
                Some(vm.clone()),
                Box::new(move |w| {
                    if let Some(v) = w.vms.get_mut(&vm) {
                        for f in files {
                            v.files.insert(f.path, f.content);
                        }
                    }
                    Ok(Outcome::Done)
                }),
            ),
            BackendCall::StartProgram { vm, spec } => (
                match spec.kind {
                    ProgramKind::Mgmd => c.start_mgmd,
                    ProgramKind::DataNode if spec.initial => c.start_data_node_initial,
                    ProgramKind::DataNode => c.start_data_node,
                    ProgramKind::Mysqld => c.start_mysqld,
                    ProgramKind::Api => c.start_api,
                },
                Some(vm.clone()),
                Box::new(move |w| start_program(w, &vm, &spec).map(|()| Outcome::Done)),
            ),
            BackendCall::StopProgram {
                vm,
                kind,
                cluster_shutdown,
            } => (
                match kind {
                    ProgramKind::Mgmd => c.stop_mgmd,
                    ProgramKind::DataNode => c.stop_data_node,
                    ProgramKind::Mysqld => c.stop_mysqld,
                    ProgramKind::Api => c.stop_api,
                },
                Some(vm.clone()),
                Box::new(move |w| {
                    if !cluster_shutdown && w.would_lose_node_group(&vm) {
                        return Err(failed(format!(
                            "RonDB refuses to stop the data node on {vm}: its node group would have no started node"
                        )));
                    }
                    // A stop also waits for a process that is still exiting.
                    w.exiting.remove(&vm);
                    if let Some(v) = w.vms.get_mut(&vm) {
                        v.program = None;
                    }
                    Ok(Outcome::Done)
                }),
            ),
            BackendCall::Mgm { via, cmd } => (
                c.slot_change,
                Some(via.clone()),
                Box::new(move |w| mgm(w, &via, &cmd).map(|_| Outcome::Done)),
            ),
            BackendCall::ConfigOnly => (0.0, None, Box::new(|_| Ok(Outcome::Done))),
            BackendCall::StartBackup { via, backup_id } => (
                c.create_backup,
                Some(via.clone()),
                Box::new(move |w| {
                    mgm(w, &via, &MgmCommand::StartBackup { backup_id })
                        .map(|data_nodes| Outcome::BackupTaken { data_nodes })
                }),
            ),
            BackendCall::DeleteBackup { via, backup } => (
                c.delete_backup,
                Some(via),
                Box::new(move |w| {
                    w.sink.remove(&backup.id);
                    Ok(Outcome::Done)
                }),
            ),
            BackendCall::Restore { vm, run } => (
                c.restore_backup,
                Some(vm),
                Box::new(move |w| restore(w, &run)),
            ),
            BackendCall::RestartAgent { vm } => (
                c.restart_agent,
                Some(vm.clone()),
                Box::new(move |w| {
                    if let Some(v) = w.vms.get_mut(&vm) {
                        v.agent_restarts += 1;
                    }
                    Ok(Outcome::Done)
                }),
            ),
            BackendCall::UpgradeAgent { vm, version, .. } => (
                c.upgrade_agent,
                Some(vm.clone()),
                Box::new(move |w| {
                    if let Some(v) = w.vms.get_mut(&vm) {
                        v.agent_version = version;
                        v.agent_restarts += 1;
                    }
                    Ok(Outcome::Done)
                }),
            ),
        };
        Pending {
            seconds: seconds.max(0.0),
            vm,
            fail,
            stopping,
            work,
        }
    }

    /// Ends a call begun with [`World::begin`]: drift if its VM vanished meanwhile, the
    /// injected fault if one was drawn (nothing changes), its effect otherwise.
    pub fn finish(&mut self, p: Pending) -> Result<Outcome, BackendError> {
        for s in &p.stopping {
            self.stopping.remove(s);
        }
        if let Some(name) = &p.vm {
            if !self.vms.contains_key(name) {
                return Err(BackendError::vm_gone(name.clone()));
            }
            if self.is_down(name) {
                // As the leader sees it: the agent does not answer.
                return Err(BackendError::new(
                    ErrorKind::VmGone,
                    format!("{name}: agent unreachable (the VM is down)"),
                )
                .on(name.clone()));
            }
        }
        if p.fail {
            return Err(BackendError::transient("injected fault"));
        }
        (p.work)(self)
    }

    /// What the provider and the agents report now, for the VMs in `known`.
    pub fn observe(&self, known: impl Fn(&str) -> bool) -> Observation {
        Observation {
            vms: self.vms.values().map(|v| v.info.clone()).collect(),
            programs: self
                .vms
                .iter()
                .filter(|(n, _)| known(n))
                .map(|(n, v)| (n.clone(), self.status_of(n, Some(v))))
                .collect(),
            unanswered: Default::default(),
            voters_missing: None,
        }
    }

    /// The program state the VM's agent reports.
    pub fn status(&self, vm: &str) -> ProgramStatus {
        self.status_of(vm, self.vms.get(vm))
    }

    /// [`World::status`] of `vm`, already looked up.
    fn status_of(&self, vm: &str, found: Option<&WorldVm>) -> ProgramStatus {
        let p = self.program_seen(vm, found);
        ProgramStatus {
            running: p.is_some(),
            version: p.map(|p| p.version.clone()),
            rondb: Vec::new(),
        }
    }

    /// The VM whose program uses `node_id`.
    fn host_of_node(&self, node_id: u32) -> Option<String> {
        self.vms
            .values()
            .find(|v| {
                v.program
                    .as_ref()
                    .is_some_and(|p| p.node_ids.contains(&node_id))
            })
            .map(|v| v.info.name.clone())
    }

    /// Stopping the data node on `vm` would leave its node group without a started node.
    fn would_lose_node_group(&self, vm: &str) -> bool {
        let group_of = |name: &str| -> Option<u32> {
            let p = self.vms.get(name)?.program.as_ref()?;
            if p.kind != ProgramKind::DataNode {
                return None;
            }
            p.node_ids
                .first()
                .and_then(|n| self.cluster_config.get(n))
                .and_then(|s| s.node_group)
        };
        let Some(g) = group_of(vm) else {
            return false;
        };
        !self.vms.keys().any(|n| n != vm && group_of(n) == Some(g))
    }

    /// The slot is active and bound to this VM's address in the configuration RonDB uses.
    fn check_slot(&self, vm: &str, node_id: u32) -> Result<(), BackendError> {
        let addr = self
            .vms
            .get(vm)
            .map(|v| v.info.address.clone())
            .unwrap_or_default();
        match self.cluster_config.get(&node_id) {
            None => Err(failed(format!(
                "node {node_id} is not in the cluster configuration"
            ))),
            Some(s) if !s.active => Err(failed(format!("node {node_id} is not active"))),
            Some(s) if s.host.as_deref() != Some(addr.as_str()) => Err(failed(format!(
                "node {node_id} is configured for host {:?}, not {vm} ({addr})",
                s.host
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// Idempotent by name, as every real provider: a new leader repeating the create of a VM
/// the old one made gets that VM.
fn create_vm(w: &mut World, spec: VmSpec) -> Result<Outcome, BackendError> {
    if let Some(v) = w.vms.get(&spec.name) {
        return Ok(Outcome::VmCreated(v.info.clone()));
    }
    let info = VmInfo {
        home: None,
        host_dir: None,
        backup_dir: None,
        name: spec.name.clone(),
        role: spec.role,
        zone: spec.zone.clone(),
        vm_type: spec.vm_type,
        storage_gib: spec.storage_gib,
        address: w.allocate_address(),
        agent_endpoint: String::new(),
        state: VmState::Running,
    };
    w.vms.insert(
        spec.name.clone(),
        WorldVm {
            info: info.clone(),
            installed: BTreeSet::new(),
            files: BTreeMap::new(),
            program: None,
            fs: BTreeSet::new(),
            agent_version: spec.agent_version.clone(),
            agent_restarts: 0,
        },
    );
    Ok(Outcome::VmCreated(info))
}

fn start_program(w: &mut World, vm: &str, spec: &ProgramSpec) -> Result<(), BackendError> {
    // The start waits for a process that is still exiting.
    w.exiting.remove(vm);
    let v = w
        .vms
        .get(vm)
        .ok_or_else(|| BackendError::vm_gone(vm.to_string()))?;
    if !v.installed.contains(&spec.version) {
        return Err(failed(format!(
            "RonDB {} is not installed on {vm}",
            spec.version
        )));
    }
    if let Some(p) = &v.program {
        if p.kind == spec.kind && p.version == spec.version {
            return Ok(()); // already running: idempotent
        }
        return Err(failed(format!(
            "{vm} already runs {:?} {}",
            p.kind, p.version
        )));
    }
    match spec.kind {
        ProgramKind::Mgmd => {
            let path = format!("{}/mgmd/config.ini", agent_core::model::RONDB_HOME);
            let ini = v
                .files
                .get(&path)
                .cloned()
                .ok_or_else(|| failed(format!("{path} missing on {vm}")))?;
            let loads = spec
                .command
                .iter()
                .any(|a| a == "--initial" || a == "--reload");
            if loads || w.cluster_config.is_empty() {
                w.load_config_ini(&ini).map_err(failed)?;
            }
        }
        ProgramKind::DataNode => {
            if !w.mgmd_running() {
                return Err(failed("no management server runs".into()));
            }
            let id = spec.node_ids.first().copied().unwrap_or(0);
            if !spec.initial && !v.fs.contains(&id) {
                return Err(failed(format!(
                    "data node {id} on {vm} has no file system; it needs --initial"
                )));
            }
        }
        ProgramKind::Mysqld | ProgramKind::Api => {
            if !w.all_node_groups_started() {
                return Err(failed(
                    "the cluster is not started: a node group has no data node".into(),
                ));
            }
        }
    }
    for id in &spec.node_ids {
        w.check_slot(vm, *id)?;
    }
    let v = w
        .vms
        .get_mut(vm)
        .ok_or_else(|| BackendError::vm_gone(vm.to_string()))?;
    if spec.kind == ProgramKind::DataNode {
        if let Some(id) = spec.node_ids.first() {
            v.fs.insert(*id);
        }
    }
    v.program = Some(WorldProgram {
        kind: spec.kind,
        version: spec.version.clone(),
        node_ids: spec.node_ids.clone(),
        command: spec.command.clone(),
    });
    Ok(())
}

/// `ndb_mgm -e` against the management server on `vm`.
fn mgm(w: &mut World, vm: &str, cmd: &MgmCommand) -> Result<Vec<u32>, BackendError> {
    let runs_mgmd = w
        .vms
        .get(vm)
        .and_then(|v| v.program.as_ref())
        .map(|p| p.kind)
        == Some(ProgramKind::Mgmd);
    if !runs_mgmd {
        return Err(failed(format!(
            "ndb_mgm: no management server runs on {vm}"
        )));
    }
    let unknown = |node_id: &u32| failed(format!("node {node_id} unknown"));
    match cmd {
        MgmCommand::Activate { node_id } => {
            let s = w
                .cluster_config
                .get_mut(node_id)
                .ok_or_else(|| unknown(node_id))?;
            s.active = true;
            Ok(vec![])
        }
        MgmCommand::Deactivate { node_id } => {
            let s = w
                .cluster_config
                .get(node_id)
                .ok_or_else(|| unknown(node_id))?;
            if !s.active {
                return Err(failed(format!("node {node_id} is already inactive")));
            }
            if w.host_of_node(*node_id)
                .is_some_and(|h| w.would_lose_node_group(&h))
            {
                return Err(failed(format!(
                    "RonDB refuses to deactivate node {node_id}: it would stop the cluster"
                )));
            }
            if let Some(s) = w.cluster_config.get_mut(node_id) {
                s.active = false;
            }
            // The node leaves the cluster now; its process exits a little later.
            let exit_at = w.now + w.cost.data_node_exit_after_deactivate.max(0.0);
            let mut exiting = Vec::new();
            for (name, v) in w.vms.iter_mut() {
                let hit = v.program.as_ref().is_some_and(|p| {
                    p.node_ids.contains(node_id) && p.kind == ProgramKind::DataNode
                });
                if hit {
                    if let Some(p) = v.program.take() {
                        exiting.push((name.clone(), (p, exit_at)));
                    }
                }
                v.fs.remove(node_id);
            }
            w.exiting.extend(exiting);
            Ok(vec![])
        }
        MgmCommand::Hostname { node_id, host } => {
            let s = w
                .cluster_config
                .get_mut(node_id)
                .ok_or_else(|| unknown(node_id))?;
            if s.active {
                return Err(failed(format!(
                    "HOSTNAME needs node {node_id} to be deactivated first"
                )));
            }
            s.host = Some(host.clone());
            Ok(vec![])
        }
        MgmCommand::StartBackup { backup_id } => {
            if !w.all_node_groups_started() {
                return Err(failed("backup needs every node group started".into()));
            }
            if w.sink.contains_key(backup_id) {
                return Err(failed(format!(
                    "backup {backup_id} already exists in the sink"
                )));
            }
            let nodes: Vec<u32> = w
                .vms
                .values()
                .filter_map(|v| v.program.as_ref())
                .filter(|p| p.kind == ProgramKind::DataNode)
                .flat_map(|p| p.node_ids.clone())
                .collect();
            w.sink.insert(
                *backup_id,
                SinkBackup {
                    data_nodes: nodes.clone(),
                },
            );
            Ok(nodes)
        }
    }
}

fn restore(w: &mut World, run: &RestoreRun) -> Result<Outcome, BackendError> {
    let b = w
        .sink
        .get(&run.backup.id)
        .cloned()
        .ok_or_else(|| failed(format!("backup {} not found in its sink", run.backup.id)))?;
    if !w.all_node_groups_started() {
        return Err(failed("ndb_restore needs a started cluster".into()));
    }
    match run.step {
        RestoreStep::Meta => Ok(Outcome::RestoreMetaRead {
            original_nodes: b.data_nodes,
        }),
        RestoreStep::Data => {
            let n = run.original_node.unwrap_or(0);
            if !b.data_nodes.contains(&n) {
                return Err(failed(format!(
                    "backup {} has no files of node {n}",
                    run.backup.id
                )));
            }
            Ok(Outcome::Done)
        }
        RestoreStep::RebuildIndexes => Ok(Outcome::Done),
    }
}
