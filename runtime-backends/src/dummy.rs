//! The dummy runtime: every call takes its simulated time and changes the mock world the way
//! the real program would, refusing what RonDB would refuse.

use agent_core::actions::RestoreStep;
use agent_core::backend::OpId;
use agent_core::backend::{
    BackendError, MgmCommand, ProcessRuntime, ProgramKind, ProgramSpec, ProgramStatus, RestoreRun,
};
use agent_core::desired::BackupSpec;
use agent_core::model::ConfigFile;
use async_trait::async_trait;
use sim_world::{lock, once, step, SharedWorld, SinkBackup, World, WorldProgram};
use std::future::Future;

/// `ProcessRuntime` over the mock world.
#[derive(Clone)]
pub struct DummyRuntime {
    pub world: SharedWorld,
}

impl DummyRuntime {
    pub fn new(world: SharedWorld) -> Self {
        DummyRuntime { world }
    }

    fn cost(&self, f: impl FnOnce(&agent_core::cost::CostModel) -> f64) -> f64 {
        f(&lock(&self.world).cost)
    }

    /// One operation on `vm`, run once per operation id as the VM's agent would.
    fn run<T>(
        &self,
        op: OpId,
        seconds: f64,
        vm: String,
        f: impl FnOnce(&mut World) -> Result<T, BackendError> + Send + 'static,
    ) -> impl Future<Output = Result<T, BackendError>> + '_
    where
        T: Clone + Send + Sync + 'static,
    {
        let world = self.world.clone();
        once(&self.world, op, async move {
            step(&world, seconds, Some(&vm), f).await
        })
    }
}

fn failed(msg: String) -> BackendError {
    BackendError::Failed(msg)
}

/// Stopping the data node on `vm` would leave its node group without a started node.
fn would_lose_node_group(w: &World, vm: &str) -> bool {
    let group_of = |name: &str| -> Option<u32> {
        let p = w.vms.get(name)?.program.as_ref()?;
        if p.kind != ProgramKind::DataNode {
            return None;
        }
        p.node_ids
            .first()
            .and_then(|n| w.cluster_config.get(n))
            .and_then(|s| s.node_group)
    };
    let Some(g) = group_of(vm) else {
        return false;
    };
    !w.vms.keys().any(|n| n != vm && group_of(n) == Some(g))
}

/// The slot is active and bound to this VM's address in the configuration RonDB uses.
fn check_slot(w: &World, vm: &str, node_id: u32) -> Result<(), BackendError> {
    let addr = w
        .vms
        .get(vm)
        .map(|v| v.info.address.clone())
        .unwrap_or_default();
    match w.cluster_config.get(&node_id) {
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

#[async_trait]
impl ProcessRuntime for DummyRuntime {
    async fn install_software(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        _url: &str,
    ) -> Result<(), BackendError> {
        let cost = self.cost(|c| c.install_software);
        let (vm, version) = (vm.to_string(), version.to_string());
        self.run(op, cost, vm.clone(), move |w| {
            if let Some(v) = w.vms.get_mut(&vm) {
                v.installed.insert(version);
            }
            Ok(())
        })
        .await
    }

    async fn write_files(
        &self,
        op: OpId,
        vm: &str,
        files: &[ConfigFile],
    ) -> Result<(), BackendError> {
        let cost = self.cost(|c| c.write_config);
        let (vm, files) = (vm.to_string(), files.to_vec());
        self.run(op, cost, vm.clone(), move |w| {
            if let Some(v) = w.vms.get_mut(&vm) {
                for f in files {
                    v.files.insert(f.path, f.content);
                }
            }
            Ok(())
        })
        .await
    }

    async fn start_program(
        &self,
        op: OpId,
        vm: &str,
        spec: &ProgramSpec,
    ) -> Result<(), BackendError> {
        let cost = self.cost(|c| match spec.kind {
            ProgramKind::Mgmd => c.start_mgmd,
            ProgramKind::DataNode if spec.initial => c.start_data_node_initial,
            ProgramKind::DataNode => c.start_data_node,
            ProgramKind::Mysqld => c.start_mysqld,
            ProgramKind::Api => c.start_api,
        });
        let (vm, spec) = (vm.to_string(), spec.clone());
        self.run(op, cost, vm.clone(), move |w| {
            // The start waits for a process that is still exiting.
            w.exiting.remove(&vm);
            let v = w
                .vms
                .get(&vm)
                .ok_or_else(|| BackendError::VmGone(vm.clone()))?;
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
                check_slot(w, &vm, *id)?;
            }
            let v = w
                .vms
                .get_mut(&vm)
                .ok_or_else(|| BackendError::VmGone(vm.clone()))?;
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
        })
        .await
    }

    async fn stop_program(
        &self,
        op: OpId,
        vm: &str,
        _kind: ProgramKind,
        cluster_shutdown: bool,
    ) -> Result<(), BackendError> {
        let cost = self.cost(|c| match _kind {
            ProgramKind::Mgmd => c.stop_mgmd,
            ProgramKind::DataNode => c.stop_data_node,
            ProgramKind::Mysqld => c.stop_mysqld,
            ProgramKind::Api => c.stop_api,
        });
        let vm = vm.to_string();
        lock(&self.world).stopping.insert(vm.clone());
        let name = vm.clone();
        let r = self.run(op, cost, vm.clone(), move |w| {
            if !cluster_shutdown && would_lose_node_group(w, &vm) {
                return Err(failed(format!(
                    "RonDB refuses to stop the data node on {vm}: its node group would have no started node"
                )));
            }
            // A stop also waits for a process that is still exiting.
            w.exiting.remove(&vm);
            if let Some(v) = w.vms.get_mut(&vm) {
                v.program = None;
            }
            Ok(())
        })
        .await;
        lock(&self.world).stopping.remove(&name);
        r
    }

    async fn status(&self, vm: &str) -> Result<ProgramStatus, BackendError> {
        let w = lock(&self.world);
        if !w.vms.contains_key(vm) {
            return Err(BackendError::VmGone(vm.to_string()));
        }
        let p = w.visible_program(vm);
        Ok(ProgramStatus {
            running: p.is_some(),
            version: p.map(|p| p.version.clone()),
        })
    }

    async fn mgm_command(
        &self,
        op: OpId,
        vm: &str,
        cmd: &MgmCommand,
    ) -> Result<Vec<u32>, BackendError> {
        let cost = self.cost(|c| match cmd {
            MgmCommand::StartBackup { .. } => c.create_backup,
            _ => c.slot_change,
        });
        let (vm, cmd) = (vm.to_string(), cmd.clone());
        // DEACTIVATE stops the node's program: its VM is not a live peer meanwhile.
        let target = match &cmd {
            MgmCommand::Deactivate { node_id } => lock(&self.world)
                .vms
                .values()
                .find(|v| {
                    v.program
                        .as_ref()
                        .is_some_and(|p| p.node_ids.contains(node_id))
                })
                .map(|v| v.info.name.clone()),
            _ => None,
        };
        if let Some(t) = &target {
            lock(&self.world).stopping.insert(t.clone());
        }
        let r = self
            .run(op, cost, vm.clone(), move |w| {
                let runs_mgmd = w
                    .vms
                    .get(&vm)
                    .and_then(|v| v.program.as_ref())
                    .map(|p| p.kind)
                    == Some(ProgramKind::Mgmd);
                if !runs_mgmd {
                    return Err(failed(format!(
                        "ndb_mgm: no management server runs on {vm}"
                    )));
                }
                match &cmd {
                    MgmCommand::Activate { node_id } => {
                        let s = w
                            .cluster_config
                            .get_mut(node_id)
                            .ok_or_else(|| failed(format!("node {node_id} unknown")))?;
                        s.active = true;
                        Ok(vec![])
                    }
                    MgmCommand::Deactivate { node_id } => {
                        let s = w
                            .cluster_config
                            .get_mut(node_id)
                            .ok_or_else(|| failed(format!("node {node_id} unknown")))?;
                        if !s.active {
                            return Err(failed(format!("node {node_id} is already inactive")));
                        }
                        let host = w
                            .vms
                            .values()
                            .find(|v| {
                                v.program
                                    .as_ref()
                                    .is_some_and(|p| p.node_ids.contains(node_id))
                            })
                            .map(|v| v.info.name.clone());
                        if host.is_some_and(|h| would_lose_node_group(w, &h)) {
                            return Err(failed(format!(
                            "RonDB refuses to deactivate node {node_id}: it would stop the cluster"
                        )));
                        }
                        let Some(s) = w.cluster_config.get_mut(node_id) else {
                            return Err(failed(format!("node {node_id} unknown")));
                        };
                        s.active = false;
                        // The node leaves the cluster now; its process exits a little later.
                        let exit_at = tokio::time::Instant::now()
                            + std::time::Duration::from_secs_f64(
                                w.cost.data_node_exit_after_deactivate.max(0.0),
                            );
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
                            .ok_or_else(|| failed(format!("node {node_id} unknown")))?;
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
            })
            .await;
        if let Some(t) = &target {
            lock(&self.world).stopping.remove(t);
        }
        r
    }

    async fn restore(
        &self,
        op: OpId,
        vm: &str,
        run: &RestoreRun,
    ) -> Result<Vec<u32>, BackendError> {
        let cost = self.cost(|c| c.restore_backup);
        let (vm, run) = (vm.to_string(), run.clone());
        self.run(op, cost, vm.clone(), move |w| {
            let b =
                w.sink.get(&run.backup.id).cloned().ok_or_else(|| {
                    failed(format!("backup {} not found in its sink", run.backup.id))
                })?;
            if !w.all_node_groups_started() {
                return Err(failed("ndb_restore needs a started cluster".into()));
            }
            match run.step {
                RestoreStep::Meta => Ok(b.data_nodes),
                RestoreStep::Data => {
                    let n = run.original_node.unwrap_or(0);
                    if !b.data_nodes.contains(&n) {
                        return Err(failed(format!(
                            "backup {} has no files of node {n}",
                            run.backup.id
                        )));
                    }
                    Ok(vec![])
                }
                RestoreStep::RebuildIndexes => Ok(vec![]),
            }
        })
        .await
    }

    async fn delete_backup(
        &self,
        op: OpId,
        vm: &str,
        backup: &BackupSpec,
    ) -> Result<(), BackendError> {
        let cost = self.cost(|c| c.delete_backup);
        let (vm, id) = (vm.to_string(), backup.id);
        self.run(op, cost, vm.clone(), move |w| {
            w.sink.remove(&id);
            Ok(())
        })
        .await
    }

    async fn restart_agent(&self, op: OpId, vm: &str) -> Result<(), BackendError> {
        let cost = self.cost(|c| c.restart_agent);
        let vm = vm.to_string();
        self.run(op, cost, vm.clone(), move |w| {
            if let Some(v) = w.vms.get_mut(&vm) {
                v.agent_restarts += 1;
            }
            Ok(())
        })
        .await
    }

    async fn upgrade_agent(
        &self,
        op: OpId,
        vm: &str,
        version: &str,
        _url: &str,
    ) -> Result<(), BackendError> {
        let cost = self.cost(|c| c.upgrade_agent);
        let (vm, version) = (vm.to_string(), version.to_string());
        self.run(op, cost, vm.clone(), move |w| {
            if let Some(v) = w.vms.get_mut(&vm) {
                v.agent_version = version;
                v.agent_restarts += 1;
            }
            Ok(())
        })
        .await
    }
}
