//! Process lifecycle: start programs in RonDB's order, restart them for a new version or
//! restart clock within the disruption budget, and stop them cleanly when RonDB should not run.

use super::Planner;
use crate::actions::ActionKind;
use crate::model::{Role, Vm};

pub(super) fn plan(p: &mut Planner) {
    if p.want_running() {
        run(p);
    } else {
        stop_all(p);
    }
}

/// The VM is ready to run its program: software installed, slots bound, files current.
fn ready(p: &mut Planner, vm: &Vm) -> bool {
    let v = p.version();
    ready_for(p, vm, v)
}

fn ready_for(p: &mut Planner, vm: &Vm, version: &str) -> bool {
    if p.retiring.contains(&vm.name) || p.is_locked_vm(&vm.name) {
        return false;
    }
    if !vm.installed.contains(version) {
        return false;
    }
    let held = p.held(vm).len();
    if held == 0 || held < p.slots_per_vm(vm.role) {
        return false;
    }
    p.config_current(vm)
}

fn node_ids(p: &Planner, vm: &Vm) -> Vec<u32> {
    p.held(vm).to_vec()
}

fn run(p: &mut Planner) {
    let version = p.version().to_string();
    let clock = p.d.rondb_running_since;
    let mgmd_version = p.mgmd_start_version();
    for vm in p.vms_of(Role::Mgmd) {
        if !ready_for(p, vm, mgmd_version) {
            continue;
        }
        if !vm.running {
            // It loads config.ini: not while slots change (the file would be stale).
            if p.version_gate(Role::Mgmd, mgmd_version) && !p.slot_change_active {
                p.propose(ActionKind::StartMgmd {
                    vm: vm.name.clone(),
                    node_id: node_ids(p, vm)[0],
                    version: mgmd_version.to_string(),
                    initial: !vm.mgmd_initialized,
                    clock,
                });
            }
        } else if !p.current(vm) && restart_allowed(p, vm) && may_stop(p, vm) {
            stop(p, vm);
        }
    }
    for vm in p.vms_of(Role::Ndbd) {
        if !ready(p, vm) {
            if stray(p, vm) {
                stop(p, vm);
            }
            continue;
        }
        let g = vm.node_group.unwrap_or(0);
        if !vm.running {
            if p.mgmd_up().is_none() || !p.version_gate(Role::Ndbd, &version) {
                continue;
            }
            let initial = !vm.has_data;
            // An empty node copies its data from a started replica of its node group; only
            // while the cluster is being created may every replica start empty.
            if initial && p.s.started_groups.contains(&g) && p.ng_up(g) == 0 {
                continue;
            }
            p.propose(ActionKind::StartDataNode {
                vm: vm.name.clone(),
                node_id: node_ids(p, vm)[0],
                node_group: g,
                version: version.clone(),
                initial,
                clock,
            });
        } else if !p.current(vm) && restart_allowed(p, vm) && may_stop(p, vm) {
            stop(p, vm);
        }
    }
    let serving = p.serving();
    let restore_ok = p.d.restore_from_backup.is_none() || p.s.restore.done;
    for role in [Role::Mysqld, Role::Api] {
        for vm in p.vms_of(role) {
            if !ready(p, vm) {
                continue;
            }
            if !vm.running {
                if serving && restore_ok && p.version_gate(role, &version) {
                    let ids = node_ids(p, vm);
                    let name = vm.name.clone();
                    let v = version.clone();
                    p.propose(match role {
                        Role::Mysqld => ActionKind::StartMysqld {
                            vm: name,
                            node_ids: ids,
                            version: v,
                            clock,
                        },
                        _ => ActionKind::StartApi {
                            vm: name,
                            node_ids: ids,
                            version: v,
                            clock,
                        },
                    });
                }
            } else if !p.current(vm) && restart_allowed(p, vm) && may_stop(p, vm) {
                stop(p, vm);
            }
        }
    }
}

/// Phase gates for restarting a running program: upgrades go management servers, data
/// nodes, then MySQLd/API (downgrades the reverse); rolling restarts in the upgrade order.
fn restart_allowed(p: &Planner, vm: &Vm) -> bool {
    let version = p.version();
    if vm.version.as_deref() != Some(version) {
        p.version_gate(vm.role, version)
    } else {
        p.clock_gate(vm.role)
    }
}

/// The disruption budget: may this VM's program go down now?
pub(super) fn may_stop(p: &Planner, vm: &Vm) -> bool {
    if !p.want_running() {
        return true;
    }
    match vm.role {
        Role::Ndbd => {
            let g = vm.node_group.unwrap_or(0);
            let others_up = p
                .active_members(g)
                .filter(|w| w.name != vm.name && p.up(w))
                .count();
            // One replica per node group at a time: every other replica is started.
            let others_all_up = p
                .active_members(g)
                .filter(|w| w.name != vm.name)
                .all(|w| p.up(w));
            others_up >= 1
                && others_all_up
                && p.mgmd_up().is_some_and(|m| m.name != vm.name)
                && !p.backup_active
        }
        Role::Mgmd => {
            let mgmd_disrupted = p.vms_of(Role::Mgmd).any(|m| p.is_disrupted(&m.name));
            if mgmd_disrupted {
                return false;
            }
            let other_up = p
                .vms_of(Role::Mgmd)
                .any(|m| m.name != vm.name && p.up(m) && !p.retiring.contains(&m.name));
            // Keep an arbitrator while data nodes restart, and a target for mgm commands.
            other_up
                || (!p.vms_of(Role::Ndbd).any(|d| p.is_disrupted(&d.name))
                    && !p.slot_change_active
                    && !p.backup_active)
        }
        Role::Mysqld | Role::Api => {
            let mut members = p.vms_of(vm.role);
            // Counting VMs being drained too: scaling to zero stops all but one first, then
            // the last one once the others are gone.
            members.clone().count() <= 1 || members.any(|w| w.name != vm.name && p.up(w))
        }
        Role::Bootstrap => false,
    }
}

/// A data node whose program runs though its VM holds no active slot (its process outlived
/// `DEACTIVATE`): it is no replica of anything, so stopping it is always safe, and nothing
/// can start on the VM until it is stopped. Retiring VMs are stopped by the machines planner.
fn stray(p: &Planner, vm: &Vm) -> bool {
    vm.running
        && p.held(vm).is_empty()
        && !p.retiring.contains(&vm.name)
        && !p.is_locked_vm(&vm.name)
        && !p.binding_in_flight(&vm.name)
}

pub(super) fn stop(p: &mut Planner, vm: &Vm) {
    let name = vm.name.clone();
    // A deactivated slot stays bound to its VM: the node id of a stray process.
    let node_id = p.held(vm).first().copied().or_else(|| {
        p.s.slots
            .values()
            .find(|x| !x.external && x.host.as_deref() == Some(vm.name.as_str()))
            .map(|x| x.node_id)
    });
    p.propose(match vm.role {
        Role::Mgmd => ActionKind::StopMgmd {
            vm: name,
            node_id: node_id.unwrap_or(0),
        },
        Role::Ndbd => ActionKind::StopDataNode {
            vm: name,
            node_id: node_id.unwrap_or(0),
            node_group: vm.node_group.unwrap_or(0),
        },
        Role::Mysqld => ActionKind::StopMysqld { vm: name },
        Role::Api | Role::Bootstrap => ActionKind::StopApi { vm: name },
    });
}

/// Clean shutdown: SQL and API first, then data nodes together, then management servers.
fn stop_all(p: &mut Planner) {
    let running = |p: &Planner, roles: &[Role]| {
        p.s.vms
            .values()
            .any(|v| roles.contains(&v.role) && (v.running || p.is_disrupted(&v.name)))
    };
    let order: [&[Role]; 3] = [&[Role::Mysqld, Role::Api], &[Role::Ndbd], &[Role::Mgmd]];
    for (i, roles) in order.iter().enumerate() {
        if order[..i].iter().any(|earlier| running(p, earlier)) {
            return;
        }
        let vms: Vec<&Vm> =
            p.s.vms
                .values()
                .filter(|v| roles.contains(&v.role) && v.running)
                .collect();
        for vm in vms {
            if !p.is_locked_vm(&vm.name) {
                stop(p, vm);
            }
        }
    }
}
