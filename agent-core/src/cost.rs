//! The simulated duration of each action (architecture.md's default cost model). Used by the
//! mock backends and by plan-quality checks (critical path of a rolling change).

use crate::actions::ActionKind;
use serde::{Deserialize, Serialize};

/// Seconds per action kind; every field can be overridden (`simulate --cost-model FILE`
/// takes a JSON object with any subset of these fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostModel {
    pub create_vm: f64,
    pub delete_vm: f64,
    pub start_vm: f64,
    pub install_software: f64,
    pub write_config: f64,
    pub start_mgmd: f64,
    pub stop_mgmd: f64,
    pub start_data_node_initial: f64,
    pub start_data_node: f64,
    pub stop_data_node: f64,
    pub start_mysqld: f64,
    pub stop_mysqld: f64,
    pub start_api: f64,
    pub stop_api: f64,
    pub slot_change: f64,
    pub create_backup: f64,
    pub delete_backup: f64,
    pub restore_backup: f64,
    pub restart_agent: f64,
    pub upgrade_agent: f64,
    /// Not an action: how long a data node's process takes to exit after `DEACTIVATE`
    /// reported success (RonDB's client waits up to 3 s for the stop to begin, not to end).
    pub data_node_exit_after_deactivate: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            create_vm: 60.0,
            delete_vm: 20.0,
            start_vm: 30.0,
            install_software: 20.0,
            write_config: 1.0,
            start_mgmd: 5.0,
            stop_mgmd: 2.0,
            start_data_node_initial: 90.0,
            start_data_node: 60.0,
            stop_data_node: 10.0,
            start_mysqld: 15.0,
            stop_mysqld: 5.0,
            start_api: 5.0,
            stop_api: 2.0,
            slot_change: 2.0,
            create_backup: 30.0,
            delete_backup: 5.0,
            restore_backup: 120.0,
            restart_agent: 5.0,
            upgrade_agent: 10.0,
            data_node_exit_after_deactivate: 3.0,
        }
    }
}

impl CostModel {
    /// Seconds the action takes.
    pub fn seconds(&self, k: &ActionKind) -> f64 {
        use ActionKind::*;
        match k {
            CreateVm { .. } => self.create_vm,
            DeleteVm { .. } => self.delete_vm,
            StartVm { .. } => self.start_vm,
            InstallSoftware { .. } => self.install_software,
            WriteConfig { .. } => self.write_config,
            StartMgmd { .. } => self.start_mgmd,
            StopMgmd { .. } => self.stop_mgmd,
            StartDataNode { initial: true, .. } => self.start_data_node_initial,
            StartDataNode { .. } => self.start_data_node,
            StopDataNode { .. } => self.stop_data_node,
            StartMysqld { .. } => self.start_mysqld,
            StopMysqld { .. } => self.stop_mysqld,
            StartApi { .. } => self.start_api,
            StopApi { .. } => self.stop_api,
            ActivateNode { .. } | DeactivateNode { .. } | SetHostname { .. } => self.slot_change,
            CreateBackup { .. } => self.create_backup,
            DeleteBackup { .. } => self.delete_backup,
            RestoreBackup { .. } => self.restore_backup,
            RestartAgent { .. } => self.restart_agent,
            UpgradeAgent { .. } => self.upgrade_agent,
        }
    }
}
