//! Machines: create VMs a role lacks, drain and delete the ones it has too many of, and
//! replace VMs whose type, storage or zone no longer matches, one at a time and online.

use super::Planner;
use crate::actions::ActionKind;
use crate::model::{Role, Vm};
use std::cmp::Reverse;

pub(super) fn plan(p: &mut Planner) {
    bring_back(p);
    for role in [Role::Mgmd, Role::Mysqld, Role::Api] {
        stateless_role(p, role);
    }
    for g in 0..p.d.num_node_groups {
        node_group(p, g);
    }
    // Drain everything chosen for retirement.
    let retiring: Vec<String> = p.retiring.iter().cloned().collect();
    for name in retiring {
        if let Some(vm) = p.s.vms.get(&name) {
            retire_step(p, vm);
        }
    }
}

/// VMs that are down are started again (with their disks) before anything else touches
/// them; VMs given up after their grace period are deleted at the provider.
fn bring_back(p: &mut Planner) {
    let s = p.s;
    for v in s.vms.values().filter(|v| v.down) {
        p.propose(ActionKind::StartVm {
            vm: v.name.clone(),
            role: v.role,
        });
    }
    for (vm, role) in &s.abandoned {
        p.propose(ActionKind::DeleteVm {
            vm: vm.clone(),
            role: *role,
        });
    }
}

/// Management servers, MySQL servers and API hosts: any VM of the role can do the job.
fn stateless_role(p: &mut Planner, role: Role) {
    let target = p.target(role);
    // Slices of the round's index: nothing is collected for a role that needs no change.
    let members: &[&Vm] = p.vms_of_slice(role);
    let creating = p.creating(role, None);
    let n = members.len() + creating;
    if n < target {
        for i in 0..target - n {
            create(p, role, None, members.len() + creating + i >= target);
        }
        return;
    }
    if creating > 0 {
        return;
    }
    let mut victims: Vec<&Vm> = Vec::new();
    // Whether any member does not conform; the list itself is built only when ranked.
    let any_nonconf = members.iter().any(|v| !p.conforming(v));
    if members.len() > target {
        let excess = members.len() - target;
        let chosen: Vec<&Vm> = ranked(p, members).into_iter().take(excess).collect();
        // A surge replacement drains the old VM only once the VMs that stay serve.
        let staying_ready = members
            .iter()
            .filter(|v| !chosen.iter().any(|c| c.name == v.name))
            .all(|v| !p.want_running() || v.running);
        if !any_nonconf || staying_ready {
            victims = chosen;
        }
    } else if any_nonconf {
        // Surge (a new VM first) when allowed and there are slots for it; else drain first.
        if p.d.allow_requesting_temporary_vms && free_slots(p, role) >= p.slots_per_vm(role) {
            create(p, role, None, true);
        } else {
            let nonconf: Vec<&Vm> = members
                .iter()
                .copied()
                .filter(|v| !p.conforming(v))
                .collect();
            victims = ranked(p, &nonconf).into_iter().take(1).collect();
        }
    }
    for v in victims {
        p.retiring.insert(v.name.clone());
    }
}

/// Data nodes: each node group keeps `ActiveReplicationFactor` VMs with an active slot, plus
/// a temporary one while a replica must go down and no other could take its place.
fn node_group(p: &mut Planner, g: u32) {
    let target = p.target(Role::Ndbd);
    let members: &[&Vm] = p.group_slice(g);
    if super::group_lost(p, g) {
        // Every replica that held this node group's rows is gone: fresh VMs would make an
        // empty node group behind the user's back. Nothing is created; the reconciliation
        // ends in ERROR_STATE naming the node group and what the user can do.
        return;
    }
    let creating = p.creating(Role::Ndbd, Some(g));
    // Whether any member does not conform; the list itself is built only when ranked.
    let any_nonconf = members.iter().any(|v| !p.conforming(v));
    let want = p.want_running();
    let needs_restart = want && p.active_members(g).any(|v| v.running && !p.current(v));
    let room = (p.d.max_replication_factor as usize) > target;
    let surge_ok = p.d.allow_requesting_temporary_vms && room && want;
    // With one replica, restarting it would take the node group down: a temporary replica
    // holds the data meanwhile.
    let extra = usize::from(surge_ok && (any_nonconf || (needs_restart && target <= 1)));
    let desired_n = target + extra;
    let n = members.len() + creating;
    if n < desired_n {
        for i in 0..desired_n - n {
            create(
                p,
                Role::Ndbd,
                Some(g),
                members.len() + creating + i >= target,
            );
        }
        return;
    }
    if creating > 0 {
        return;
    }
    // Replace only after restarts finish: the replicas being replaced are restart budget.
    if any_nonconf && want && !needs_restart {
        let enough = if surge_ok {
            members.len() > target
        } else {
            members.len() >= target
        };
        let conforming_ready = members
            .iter()
            .filter(|v| p.conforming(v))
            .all(|v| p.holds_active_slot(v) && v.running);
        if enough && conforming_ready {
            let nonconf: Vec<&Vm> = members
                .iter()
                .copied()
                .filter(|v| !p.conforming(v))
                .collect();
            if let Some(v) = ranked(p, &nonconf).into_iter().next() {
                p.retiring.insert(v.name.clone());
            }
        }
        return;
    }
    // Fewer replicas only after restarts finish: the spare replicas are the disruption budget.
    if members.len() > desired_n && !needs_restart {
        let excess = members.len() - desired_n;
        for v in ranked(p, members).into_iter().take(excess) {
            p.retiring.insert(v.name.clone());
        }
    }
}

/// Slots of a role that no VM holds nor still needs: room for one more VM.
fn free_slots(p: &Planner, role: Role) -> usize {
    let free =
        p.s.slots
            .values()
            .filter(|x| x.kind == role && !x.active && !x.external)
            .filter(|x| x.host.as_ref().is_none_or(|h| !p.s.vms.contains_key(h)))
            .count();
    // Slots that VMs of the role still have to bind are not free.
    let k = p.slots_per_vm(role);
    let still_needed: usize = p
        .vms_of(role)
        .map(|v| k.saturating_sub(p.held(v).len()))
        .sum();
    free.saturating_sub(still_needed)
}

/// Retirement order: VMs that do not match the desired machine, then replicas sharing a zone,
/// then ones without an active slot, then ones holding no data, then temporary ones, then
/// stopped ones, then the newest.
fn ranked<'a>(p: &Planner, vms: &[&'a Vm]) -> Vec<&'a Vm> {
    let mut out = vms.to_vec();
    out.sort_by_key(|v| {
        (
            p.conforming(v),
            !p.shares_zone(v),
            p.holds_active_slot(v),
            v.has_data,
            !v.temporary,
            v.running,
            Reverse(v.seq),
        )
    });
    out
}

fn create(p: &mut Planner, role: Role, ng: Option<u32>, temporary: bool) {
    let zone = pick_zone(p, role, ng);
    let (vm_type, storage_gib) = p.spec(role);
    let seq = p.take_seq();
    let vm = match ng {
        Some(g) => format!("ndbd-{g}-{seq}"),
        None => format!("{role}-{seq}"),
    };
    p.propose(ActionKind::CreateVm {
        vm,
        role,
        zone,
        vm_type,
        storage_gib,
        temporary,
        node_group: ng,
        agent_version: p.d.ndb_agent_version.clone(),
        agent_clock: p.d.ndb_agent_running_since,
        seq,
    });
}

/// The zone with the fewest VMs of the node group (data nodes), then of the role, then the
/// first listed: replicas of a node group land in different zones when there are enough.
fn pick_zone(p: &Planner, role: Role, ng: Option<u32>) -> String {
    let planned: Vec<(&String, Role, Option<u32>)> =
        p.s.in_flight
            .values()
            .map(|a| &a.kind)
            .chain(p.proposals.iter())
            .filter_map(|k| match k {
                ActionKind::CreateVm {
                    zone,
                    role,
                    node_group,
                    ..
                } => Some((zone, *role, *node_group)),
                _ => None,
            })
            .collect();
    let count = |z: &String, same_group: bool| {
        let existing =
            p.s.vms
                .values()
                .filter(|v| v.role == role && &v.zone == z && !p.retiring.contains(&v.name))
                .filter(|v| !same_group || (v.node_group == ng && p.spec_ok(v)))
                .count();
        let new = planned
            .iter()
            .filter(|(pz, r, g)| *pz == z && *r == role && (!same_group || *g == ng))
            .count();
        existing + new
    };
    p.d.availability_zones
        .iter()
        .enumerate()
        .min_by_key(|(i, z)| (count(z, true), count(z, false), *i))
        .map(|(_, z)| z.clone())
        .unwrap_or_default()
}

/// One step of draining a VM: stop its program, release its slots, delete it.
fn retire_step(p: &mut Planner, vm: &Vm) {
    if p.is_locked_vm(&vm.name) || p.binding_in_flight(&vm.name) {
        return;
    }
    match vm.role {
        Role::Ndbd => {
            let slot = p.held(vm).first().copied();
            if let Some(node_id) = slot {
                let g = vm.node_group.unwrap_or(0);
                // DEACTIVATE stops the node: another started replica must remain.
                let others_up = p
                    .active_members(g)
                    .filter(|w| w.name != vm.name && p.up(w))
                    .count();
                // Never release the last copy of a node group's data.
                let others_hold_data = p
                    .active_members(g)
                    .any(|w| w.name != vm.name && w.has_data && !p.is_disrupted(&w.name));
                let allowed = if p.want_running() {
                    !vm.has_data || (others_up >= 1 && !p.backup_active && p.mgmd_up().is_some())
                } else {
                    !vm.has_data || others_hold_data || !p.s.started_groups.contains(&g)
                };
                if !allowed {
                    return;
                }
                if let Some(via) = p.slot_change_via(Role::Ndbd) {
                    p.propose(ActionKind::DeactivateNode {
                        node_id,
                        vm: Some(vm.name.clone()),
                        role: Role::Ndbd,
                        via,
                    });
                }
            } else if vm.running {
                // Its process outlived DEACTIVATE (RonDB reports success once the stop has
                // begun; a new leader may look before it exits): stop it, then delete. It
                // holds no slot, so no node group loses a replica by it.
                super::processes::stop(p, vm);
            } else {
                p.propose(ActionKind::DeleteVm {
                    vm: vm.name.clone(),
                    role: vm.role,
                });
            }
        }
        role => {
            if vm.running {
                if super::processes::may_stop(p, vm) {
                    super::processes::stop(p, vm);
                }
                return;
            }
            let slots: Vec<u32> = p.held(vm).to_vec();
            if slots.is_empty() {
                p.propose(ActionKind::DeleteVm {
                    vm: vm.name.clone(),
                    role,
                });
                return;
            }
            if let Some(via) = p.slot_change_via(role) {
                // One slot per round: the action holds the VM.
                p.propose(ActionKind::DeactivateNode {
                    node_id: slots[0],
                    vm: Some(vm.name.clone()),
                    role,
                    via,
                });
            }
        }
    }
}
