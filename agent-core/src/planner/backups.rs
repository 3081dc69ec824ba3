//! Backups and restore: take each listed backup once while the cluster is steady, delete the
//! ones no longer listed, and restore another cluster's backup on the first start before any
//! SQL traffic is served.

use super::Planner;
use crate::actions::{ActionKind, RestoreStep};
use crate::model::{Role, Vm};
use std::collections::BTreeSet;

pub(super) fn plan(p: &mut Planner) {
    restore(p);
    take(p);
    delete(p);
}

fn data_tier_steady(p: &Planner) -> bool {
    p.serving()
        && !p
            .vms_of(Role::Ndbd)
            .any(|v| p.is_disrupted(&v.name) || (p.holds_active_slot(v) && !v.running))
}

fn take(p: &mut Planner) {
    if !p.want_running() || p.backup_active {
        return;
    }
    if p.d.restore_from_backup.is_some() && !p.s.restore.done {
        return;
    }
    let restore_id = p.d.restore_from_backup.as_ref().map(|r| r.id);
    let next =
        p.d.single_backups
            .iter()
            .map(|b| b.id)
            .filter(|id| Some(*id) != restore_id && !p.s.backups.contains_key(id))
            .find(|id| !p.is_locked_backup(*id));
    // Whether the data tier is steady is asked last: it walks every data node, and most
    // rounds have no backup to take.
    let Some(backup_id) = next else {
        return;
    };
    if !data_tier_steady(p) {
        return;
    }
    let Some(via) = p.mgmd_up().map(|m| m.name.clone()) else {
        return;
    };
    p.propose(ActionKind::CreateBackup { backup_id, via });
}

fn delete(p: &mut Planner) {
    // Most rounds have no backup at all: nothing to list or look up.
    if p.s.backups.is_empty() {
        return;
    }
    let listed: BTreeSet<u64> = p.d.single_backups.iter().map(|b| b.id).collect();
    let Some(via) = p.vms_of(Role::Mgmd).next().map(|m| m.name.clone()) else {
        return;
    };
    let gone: Vec<u64> =
        p.s.backups
            .keys()
            .copied()
            .filter(|id| !listed.contains(id))
            .collect();
    for backup_id in gone {
        p.propose(ActionKind::DeleteBackup {
            backup_id,
            via: via.clone(),
        });
    }
}

/// `ndb_restore`: metadata once, then the data of every original node (in parallel, one API
/// slot each), then the index rebuild. Runs right after the first start, before any MySQLd.
fn restore(p: &mut Planner) {
    let Some(r) = p.d.restore_from_backup.as_ref() else {
        return;
    };
    if p.s.restore.done || !p.want_running() || !data_tier_steady(p) {
        return;
    }
    let hosts: Vec<(&Vm, u32)> =
        p.s.vms
            .values()
            .filter(|v| matches!(v.role, Role::Mysqld | Role::Api) && !v.running)
            .filter(|v| !p.retiring.contains(&v.name))
            .filter_map(|v| p.held(v).first().map(|n| (v, *n)))
            .collect();
    let in_flight: BTreeSet<Option<u32>> =
        p.s.in_flight
            .values()
            .filter_map(|a| match &a.kind {
                ActionKind::RestoreBackup { node_id, .. } => Some(*node_id),
                _ => None,
            })
            .collect();
    let backup_id = r.id;
    let mut free = hosts.into_iter().filter(|(v, _)| !p.is_locked_vm(&v.name));
    match &p.s.restore.original_nodes {
        None => {
            if in_flight.is_empty() {
                if let Some((vm, api)) = free.next() {
                    let vm = vm.name.clone();
                    p.propose(ActionKind::RestoreBackup {
                        backup_id,
                        vm,
                        step: RestoreStep::Meta,
                        api_node_id: api,
                        node_id: None,
                    });
                }
            }
        }
        Some(nodes) => {
            let todo: Vec<u32> = nodes
                .iter()
                .copied()
                .filter(|n| !p.s.restore.data_done.contains(n) && !in_flight.contains(&Some(*n)))
                .collect();
            let all_done = nodes.iter().all(|n| p.s.restore.data_done.contains(n));
            let hosts: Vec<(String, u32)> = free.map(|(v, a)| (v.name.clone(), a)).collect();
            if all_done {
                if in_flight.is_empty() {
                    if let Some((vm, api)) = hosts.into_iter().next() {
                        p.propose(ActionKind::RestoreBackup {
                            backup_id,
                            vm,
                            step: RestoreStep::RebuildIndexes,
                            api_node_id: api,
                            node_id: None,
                        });
                    }
                }
            } else {
                for (n, (vm, api)) in todo.into_iter().zip(hosts) {
                    p.propose(ActionKind::RestoreBackup {
                        backup_id,
                        vm,
                        step: RestoreStep::Data,
                        api_node_id: api,
                        node_id: Some(n),
                    });
                }
            }
        }
    }
}
