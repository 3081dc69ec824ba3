//! Agents: roll a new agent version or an agent restart over the VMs one at a time, so the
//! control plane never loses more than one agent at once, the leader's VM last.

use super::Planner;
use crate::actions::ActionKind;

pub(super) fn plan(p: &mut Planner) {
    let busy = p.s.in_flight.values().any(|a| {
        matches!(
            a.kind,
            ActionKind::UpgradeAgent { .. } | ActionKind::RestartAgent { .. }
        )
    });
    if busy {
        return;
    }
    let version = &p.d.ndb_agent_version;
    let clock = p.d.ndb_agent_running_since;
    // The leader's VM last: its agent hands the leadership over when its turn comes.
    let leader = p.s.leader_vm.as_deref();
    // The cheap test first: most rounds no agent is due, and no name is looked up.
    let mut due =
        p.s.vms
            .values()
            .filter(|v| &v.agent_version != version || v.agent_clock < clock)
            .filter(|v| !p.retiring.contains(&v.name) && !p.is_locked_vm(&v.name));
    let candidate = match due.next() {
        Some(first) if Some(first.name.as_str()) == leader => due
            .find(|v| Some(v.name.as_str()) != leader)
            .or(Some(first)),
        first => first,
    };
    if let Some(vm) = candidate {
        let k = if &vm.agent_version != version {
            ActionKind::UpgradeAgent {
                vm: vm.name.clone(),
                role: vm.role,
                version: version.clone(),
            }
        } else {
            ActionKind::RestartAgent {
                vm: vm.name.clone(),
                role: vm.role,
            }
        };
        p.propose(k);
    }
}
