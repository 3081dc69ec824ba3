//! What an action asks of the backends, fully prepared from the state at its start, so it
//! runs without the state: the agent executes it over the two traits, the simulation against
//! its world.

use crate::actions::{Action, ActionKind, RestoreStep};
use crate::backend::{
    BackendError, CloudProvider, MgmCommand, OpId, ProcessRuntime, ProgramKind, ProgramSpec,
    RestoreRun, VmSpec,
};
use crate::commands;
use crate::desired::{BackupSpec, DesiredState, SinkType};
use crate::model::{files_for, render_config_ini, ClusterState, ConfigFile, Outcome, Role};

/// One backend call with its arguments; each action makes exactly one.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendCall {
    CreateVm(VmSpec),
    DeleteVm {
        vm: String,
    },
    StartVm {
        vm: String,
    },
    InstallSoftware {
        vm: String,
        version: String,
        url: String,
    },
    WriteFiles {
        vm: String,
        files: Vec<ConfigFile>,
    },
    StartProgram {
        vm: String,
        spec: ProgramSpec,
    },
    StopProgram {
        vm: String,
        kind: ProgramKind,
        cluster_shutdown: bool,
    },
    /// A slot change through the management server on `via`.
    Mgm {
        via: String,
        cmd: MgmCommand,
    },
    /// A slot change while no management server runs: it only goes into the configuration
    /// (config.ini is rewritten before the next start), so there is nothing to call.
    ConfigOnly,
    StartBackup {
        via: String,
        backup_id: u64,
    },
    DeleteBackup {
        via: String,
        backup: BackupSpec,
    },
    Restore {
        vm: String,
        run: RestoreRun,
    },
    RestartAgent {
        vm: String,
    },
    UpgradeAgent {
        vm: String,
        version: String,
        url: String,
    },
}

/// Gathers everything `action` needs from the desired state and the state now.
pub fn prepare(d: &DesiredState, s: &ClusterState, action: &Action) -> BackendCall {
    prepare_with(d, s, action, &mut None)
}

/// [`prepare`], with config.ini kept in `config_ini` once rendered: each management server
/// gets the same file, and the engine keeps it while the state's slots and VMs stay as
/// they are. `config_ini` must be `None` or the file rendered from this state.
pub(crate) fn prepare_with(
    d: &DesiredState,
    s: &ClusterState,
    action: &Action,
    config_ini: &mut Option<String>,
) -> BackendCall {
    // Only the programs that connect to the management servers need their addresses.
    let connect = || s.mgmd_addresses(d.default_mgmd_port).join(",");
    let home = |vm: &str| {
        s.vms
            .get(vm)
            .map(|v| v.home())
            .unwrap_or(crate::model::RONDB_HOME)
    };
    use ActionKind::*;
    match action.kind.clone() {
        CreateVm {
            vm,
            role,
            zone,
            vm_type,
            storage_gib,
            temporary,
            agent_version,
            ..
        } => BackendCall::CreateVm(VmSpec {
            name: vm,
            role,
            zone,
            vm_type,
            storage_gib,
            temporary,
            agent_version,
            join: None,
        }),
        DeleteVm { vm, .. } => BackendCall::DeleteVm { vm },
        StartVm { vm, .. } => BackendCall::StartVm { vm },
        InstallSoftware { vm, version, .. } => BackendCall::InstallSoftware {
            // Another version than the desired one (a bridge during a downgrade) comes from
            // the same place, with its own version in the name.
            url: d.rondb_download_link.replace(&d.rondb_version, &version),
            vm,
            version,
        },
        WriteConfig { vm, .. } => BackendCall::WriteFiles {
            files: s
                .vms
                .get(&vm)
                .map(|v| {
                    // Only management servers read config.ini; render it for them alone.
                    let ini = if v.role == Role::Mgmd {
                        config_ini.get_or_insert_with(|| render_config_ini(d, s))
                    } else {
                        ""
                    };
                    files_for(d, s, v, ini)
                })
                .unwrap_or_default(),
            vm,
        },
        StartMgmd {
            vm,
            node_id,
            version,
            initial,
            ..
        } => BackendCall::StartProgram {
            spec: ProgramSpec {
                kind: ProgramKind::Mgmd,
                command: commands::ndb_mgmd(home(&vm), &version, node_id, initial),
                version,
                node_ids: vec![node_id],
                initial,
            },
            vm,
        },
        StartDataNode {
            vm,
            node_id,
            version,
            initial,
            ..
        } => BackendCall::StartProgram {
            spec: ProgramSpec {
                kind: ProgramKind::DataNode,
                command: commands::ndbmtd(home(&vm), &version, &connect(), node_id, initial),
                version,
                node_ids: vec![node_id],
                initial,
            },
            vm,
        },
        StartMysqld {
            vm,
            node_ids,
            version,
            ..
        } => BackendCall::StartProgram {
            spec: ProgramSpec {
                kind: ProgramKind::Mysqld,
                command: commands::mysqld(home(&vm), &version),
                version,
                node_ids,
                initial: false,
            },
            vm,
        },
        StartApi {
            vm,
            node_ids,
            version,
            ..
        } => BackendCall::StartProgram {
            spec: ProgramSpec {
                kind: ProgramKind::Api,
                command: commands::api(home(&vm), &version),
                version,
                node_ids,
                initial: false,
            },
            vm,
        },
        StopMgmd { vm, .. } => stop(d, vm, ProgramKind::Mgmd),
        StopDataNode { vm, .. } => stop(d, vm, ProgramKind::DataNode),
        StopMysqld { vm } => stop(d, vm, ProgramKind::Mysqld),
        StopApi { vm } => stop(d, vm, ProgramKind::Api),
        ActivateNode { node_id, via, .. } => mgm(via, MgmCommand::Activate { node_id }),
        DeactivateNode { node_id, via, .. } => mgm(via, MgmCommand::Deactivate { node_id }),
        SetHostname {
            node_id, vm, via, ..
        } => {
            let host = s.vms.get(&vm).map(|v| v.address.clone()).unwrap_or(vm);
            mgm(via, MgmCommand::Hostname { node_id, host })
        }
        CreateBackup { backup_id, via } => BackendCall::StartBackup { via, backup_id },
        DeleteBackup { backup_id, via } => BackendCall::DeleteBackup {
            via,
            backup: s
                .backups
                .get(&backup_id)
                .map(|b| b.sink.clone())
                .unwrap_or_else(|| local_backup(backup_id)),
        },
        RestoreBackup {
            backup_id,
            vm,
            step,
            api_node_id,
            node_id,
        } => {
            let backup = d
                .restore_from_backup
                .clone()
                .unwrap_or_else(|| local_backup(backup_id));
            let dir = backup
                .sink_parameters
                .get("Directory")
                .and_then(|v| v.as_str())
                .unwrap_or("/srv/rondb/backups")
                .to_string();
            BackendCall::Restore {
                run: RestoreRun {
                    command: commands::ndb_restore(
                        &commands::install_dir(home(&vm), &d.rondb_version),
                        &connect(),
                        api_node_id,
                        backup_id,
                        &dir,
                        step,
                        node_id,
                    ),
                    backup,
                    step,
                    api_node_id,
                    original_node: node_id,
                },
                vm,
            }
        }
        RestartAgent { vm, .. } => BackendCall::RestartAgent { vm },
        UpgradeAgent { vm, version, .. } => BackendCall::UpgradeAgent {
            vm,
            version,
            url: d.ndb_agent_download_link.clone(),
        },
    }
}

fn stop(d: &DesiredState, vm: String, kind: ProgramKind) -> BackendCall {
    BackendCall::StopProgram {
        vm,
        kind,
        cluster_shutdown: !d.rondb_running,
    }
}

fn mgm(via: Option<String>, cmd: MgmCommand) -> BackendCall {
    match via {
        Some(via) => BackendCall::Mgm { via, cmd },
        None => BackendCall::ConfigOnly,
    }
}

fn local_backup(id: u64) -> BackupSpec {
    BackupSpec {
        id,
        sink_type: SinkType::Local,
        sink_parameters: Default::default(),
    }
}

impl BackendCall {
    /// Whether a repeat of this call under the same operation id gets the first run's
    /// result (an agent keeps results by operation id) rather than running again (a cloud
    /// provider's calls are idempotent by VM name instead).
    pub fn runs_once_per_op(&self) -> bool {
        !matches!(
            self,
            BackendCall::CreateVm(_) | BackendCall::DeleteVm { .. } | BackendCall::StartVm { .. }
        )
    }

    /// Makes the call through the backends, under the action's operation id.
    pub async fn execute(
        &self,
        op: OpId,
        provider: &dyn CloudProvider,
        runtime: &dyn ProcessRuntime,
    ) -> Result<Outcome, BackendError> {
        let done = |r: Result<(), BackendError>| r.map(|()| Outcome::Done);
        match self {
            BackendCall::CreateVm(spec) => {
                provider.create_vm(op, spec).await.map(Outcome::VmCreated)
            }
            BackendCall::DeleteVm { vm } => done(provider.delete_vm(op, vm).await),
            BackendCall::StartVm { vm } => provider.start_vm(op, vm).await.map(Outcome::VmStarted),
            BackendCall::InstallSoftware { vm, version, url } => {
                done(runtime.install_software(op, vm, version, url).await)
            }
            BackendCall::WriteFiles { vm, files } => done(runtime.write_files(op, vm, files).await),
            BackendCall::StartProgram { vm, spec } => {
                done(runtime.start_program(op, vm, spec).await)
            }
            BackendCall::StopProgram {
                vm,
                kind,
                cluster_shutdown,
            } => done(runtime.stop_program(op, vm, *kind, *cluster_shutdown).await),
            BackendCall::Mgm { via, cmd } => runtime
                .mgm_command(op, via, cmd)
                .await
                .map(|_| Outcome::Done),
            BackendCall::ConfigOnly => Ok(Outcome::Done),
            BackendCall::StartBackup { via, backup_id } => runtime
                .mgm_command(
                    op,
                    via,
                    &MgmCommand::StartBackup {
                        backup_id: *backup_id,
                    },
                )
                .await
                .map(|data_nodes| Outcome::BackupTaken { data_nodes }),
            BackendCall::DeleteBackup { via, backup } => {
                done(runtime.delete_backup(op, via, backup).await)
            }
            BackendCall::Restore { vm, run } => {
                let nodes = runtime.restore(op, vm, run).await?;
                Ok(match run.step {
                    RestoreStep::Meta => Outcome::RestoreMetaRead {
                        original_nodes: nodes,
                    },
                    _ => Outcome::Done,
                })
            }
            BackendCall::RestartAgent { vm } => done(runtime.restart_agent(op, vm).await),
            BackendCall::UpgradeAgent { vm, version, url } => {
                done(runtime.upgrade_agent(op, vm, version, url).await)
            }
        }
    }
}
