//! Software and configuration: the desired RonDB version is installed on every VM before
//! anything restarts, and each VM's files match the current topology.

use super::Planner;
use crate::actions::ActionKind;
use crate::model::Role;

pub(super) fn plan(p: &mut Planner) {
    let version = p.version();
    let bridge = p.mgmd_start_version();
    // Borrowed from the state, not the planner: proposing while walking needs no copy.
    let s = p.s;
    for vm in s.vms.values() {
        if vm.role == Role::Bootstrap || p.retiring.contains(&vm.name) {
            continue;
        }
        // A stopped management server may first need the version the data nodes still run.
        let wanted = if vm.role == Role::Mgmd && !vm.running && bridge != version {
            bridge
        } else {
            version
        };
        if !vm.installed.contains(wanted) {
            p.propose(ActionKind::InstallSoftware {
                vm: vm.name.clone(),
                role: vm.role,
                version: wanted.to_string(),
            });
        } else if !vm.installed.contains(version) {
            p.propose(ActionKind::InstallSoftware {
                vm: vm.name.clone(),
                role: vm.role,
                version: version.to_string(),
            });
        }
    }
    // Rewriting files while slots still move would only be redone; wait until they settle.
    if p.slot_change_active {
        return;
    }
    for vm in s.vms.values() {
        if !matches!(vm.role, Role::Mgmd | Role::Mysqld | Role::Api)
            || p.retiring.contains(&vm.name)
            || p.is_locked_vm(&vm.name)
        {
            continue;
        }
        let h = p.wanted_config_hash(vm);
        if vm.config_hash != Some(h) {
            p.propose(ActionKind::WriteConfig {
                vm: vm.name.clone(),
                role: vm.role,
                config_hash: h,
            });
        }
    }
}
