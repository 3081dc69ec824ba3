//! Slots: bind node ids to VMs (`HOSTNAME`), activate them, and release the slots of VMs that
//! are gone, so that every active slot has exactly one VM.

use super::Planner;
use crate::actions::ActionKind;
use crate::model::{Role, Vm};
use std::collections::BTreeSet;

pub(super) fn plan(p: &mut Planner) {
    release_lost(p);
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    for role in [Role::Mgmd, Role::Mysqld, Role::Api] {
        let k = p.slots_per_vm(role);
        for vm in p.vms_of(role) {
            if p.retiring.contains(&vm.name) || p.is_locked_vm(&vm.name) {
                continue;
            }
            let held = p.held(vm).len();
            if held >= k {
                continue;
            }
            bind_one(p, vm, role, None, &mut taken);
        }
    }
    let spares: Vec<&Vm> = p
        .vms_of(Role::Ndbd)
        .filter(|v| !p.holds_active_slot(v))
        .collect();
    for vm in spares {
        if p.retiring.contains(&vm.name) || p.is_locked_vm(&vm.name) {
            continue;
        }
        bind_one(p, vm, Role::Ndbd, vm.node_group, &mut taken);
    }
}

/// Active slots whose VM no longer exists are deactivated, so they can move to a new VM.
fn release_lost(p: &mut Planner) {
    for (node_id, kind) in p.lost_slots().map(|s| (s.node_id, s.kind)) {
        if p.is_locked_slot(node_id) {
            continue;
        }
        if let Some(via) = p.slot_change_via(kind) {
            p.propose(ActionKind::DeactivateNode {
                node_id,
                vm: None,
                role: kind,
                via,
            });
        }
    }
}

/// One step towards giving `vm` one more slot: activate a slot already bound to it, or bind
/// a free one.
fn bind_one(p: &mut Planner, vm: &Vm, role: Role, ng: Option<u32>, taken: &mut BTreeSet<u32>) {
    if p.binding_in_flight(&vm.name) {
        return;
    }
    let Some(via) = p.slot_change_via(role) else {
        return;
    };
    let s = p.s;
    let candidates = s
        .slots
        .values()
        .filter(|x| x.kind == role && x.node_group == ng && !x.active && !x.external);
    let mine = candidates
        .clone()
        .find(|x| x.host.as_deref() == Some(vm.name.as_str()) && !p.is_locked_slot(x.node_id));
    if let Some(slot) = mine {
        p.propose(ActionKind::ActivateNode {
            node_id: slot.node_id,
            vm: vm.name.clone(),
            role,
            via,
        });
        return;
    }
    let free = candidates.clone().find(|x| {
        !taken.contains(&x.node_id)
            && !p.is_locked_slot(x.node_id)
            && x.host.as_ref().is_none_or(|h| !s.vms.contains_key(h))
    });
    if let Some(slot) = free {
        taken.insert(slot.node_id);
        p.propose(ActionKind::SetHostname {
            node_id: slot.node_id,
            vm: vm.name.clone(),
            role,
            via,
        });
    }
}
