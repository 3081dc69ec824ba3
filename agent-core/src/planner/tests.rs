//! Unit tests of the planner on hand-built states: one rule each.

use super::*;
use crate::desired::DesiredState;
use crate::model::{slot_layout, ClusterState, Event, Vm};
use std::collections::BTreeSet;

/// A cluster exactly at `d`: every VM exists, holds its slots, runs the desired version.
pub(crate) fn at_desired(d: &DesiredState) -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(&Event::Accepted(d.clone()));
    s.slots = slot_layout(d).into_iter().map(|x| (x.node_id, x)).collect();
    let mut seq = 0;
    let mut add =
        |s: &mut ClusterState, role: Role, ng: Option<u32>, zone: &str, slots: Vec<u32>| {
            seq += 1;
            let name = match ng {
                Some(g) => format!("ndbd-{g}-{seq}"),
                None => format!("{role}-{seq}"),
            };
            let (vm_type, storage_gib) = crate::model::machine_spec(d, role);
            for id in &slots {
                if let Some(x) = s.slots.get_mut(id) {
                    x.active = true;
                    x.host = Some(name.clone());
                }
            }
            s.vms.insert(
                name.clone(),
                Vm {
                    home: None,
                    name: name.clone(),
                    role,
                    zone: zone.to_string(),
                    vm_type,
                    storage_gib,
                    temporary: false,
                    node_group: ng,
                    address: format!("10.0.0.{seq}"),
                    agent_version: d.ndb_agent_version.clone(),
                    agent_clock: d.ndb_agent_running_since,
                    installed: [d.rondb_version.clone()].into(),
                    config_hash: None,
                    running: true,
                    version: Some(d.rondb_version.clone()),
                    clock: d.rondb_running_since,
                    has_data: true,
                    mgmd_initialized: true,
                    start_unconfirmed: false,
                    seq,
                    down: false,
                },
            );
            s.next_vm_seq = seq + 1;
        };
    let zone = |i: usize| d.availability_zones[i % d.availability_zones.len()].clone();
    let layout = crate::model::SlotLayout::new(d);
    for i in 0..d.num_managed_mgmd_vms {
        add(
            &mut s,
            Role::Mgmd,
            None,
            &zone(i as usize),
            vec![layout.mgmd_start + i],
        );
    }
    for g in 0..d.num_node_groups {
        for r in 0..d.active_replication_factor {
            let id = g * d.max_replication_factor + r + 1;
            add(&mut s, Role::Ndbd, Some(g), &zone(r as usize), vec![id]);
        }
    }
    let k = d.num_mysqld_slots_per_vm;
    for i in 0..d.num_managed_mysqld_vms {
        let ids = (0..k).map(|j| layout.mysqld_start + i * k + j).collect();
        add(&mut s, Role::Mysqld, None, &zone(i as usize), ids);
    }
    let k = d.num_api_slots_per_vm;
    for i in 0..d.num_managed_api_vms {
        let ids = (0..k).map(|j| layout.api_start + i * k + j).collect();
        add(&mut s, Role::Api, None, &zone(i as usize), ids);
    }
    let names: Vec<String> = s.vms.keys().cloned().collect();
    for n in names {
        let h = {
            let ix = VmIndex::of(&s);
            let mut p = Planner::new(d, &s, &ix);
            let vm = s.vms[&n].clone();
            p.wanted_config_hash(&vm)
        };
        if let Some(v) = s.vms.get_mut(&n) {
            if matches!(v.role, Role::Mgmd | Role::Mysqld | Role::Api) {
                v.config_hash = Some(h);
            }
        }
    }
    s.rondb_has_run = true;
    s.started_groups = (0..d.num_node_groups).collect();
    s
}

fn kinds(actions: &[ActionKind]) -> Vec<&'static str> {
    actions.iter().map(|a| a.name()).collect()
}

#[test]
fn nothing_to_do_at_the_desired_state() {
    let d = DesiredState::example();
    let s = at_desired(&d);
    assert!(diff(&d, &s).is_empty(), "{:?}", diff(&d, &s));
    assert!(plan(&d, &s).is_empty(), "{:?}", plan(&d, &s));
}

#[test]
fn an_empty_cluster_gets_every_vm_at_once_with_replicas_in_different_zones() {
    let d = DesiredState::example();
    let mut s = ClusterState::default();
    s.apply(&Event::Accepted(d.clone()));
    let a = plan(&d, &s);
    assert!(a.iter().all(|k| k.name() == "CreateVm"), "{:?}", kinds(&a));
    let want = d.num_managed_mgmd_vms
        + d.num_node_groups * d.active_replication_factor
        + d.num_managed_mysqld_vms
        + d.num_managed_api_vms;
    assert_eq!(a.len(), want as usize);
    for g in 0..d.num_node_groups {
        let zones: BTreeSet<&str> = a
            .iter()
            .filter_map(|k| match k {
                ActionKind::CreateVm {
                    zone,
                    node_group: Some(x),
                    ..
                } if *x == g => Some(zone.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            zones.len(),
            d.active_replication_factor as usize,
            "group {g}: {zones:?}"
        );
    }
}

#[test]
fn a_rolling_restart_stops_one_replica_per_node_group_only_after_the_mgmds() {
    let mut d = DesiredState::example();
    d.num_node_groups = 3;
    let s = at_desired(&d);
    d.id += 1;
    d.rondb_running_since = d.id;
    let a = plan(&d, &s);
    assert_eq!(kinds(&a), vec!["StopMgmd"], "management servers go first");
    let mut s2 = s.clone();
    for v in s2.vms.values_mut().filter(|v| v.role == Role::Mgmd) {
        v.clock = d.rondb_running_since;
    }
    let a = plan(&d, &s2);
    let stops: Vec<u32> = a
        .iter()
        .filter_map(|k| match k {
            ActionKind::StopDataNode { node_group, .. } => Some(*node_group),
            _ => None,
        })
        .collect();
    assert_eq!(
        stops.len(),
        3,
        "one per node group in parallel: {:?}",
        kinds(&a)
    );
    assert_eq!(stops.iter().collect::<BTreeSet<_>>().len(), 3);
    assert!(
        !a.iter().any(|k| k.name() == "StopMysqld"),
        "MySQLds wait for the data nodes"
    );
}

#[test]
fn the_last_started_replica_of_a_node_group_is_never_stopped() {
    let mut d = DesiredState::example();
    d.num_node_groups = 1;
    let mut s = at_desired(&d);
    for v in s.vms.values_mut().filter(|v| v.role == Role::Mgmd) {
        v.clock = d.id + 1;
    }
    // One replica is already down (died); the other needs a restart.
    let down = s
        .vms
        .values()
        .find(|v| v.role == Role::Ndbd)
        .map(|v| v.name.clone())
        .unwrap();
    s.vms.get_mut(&down).unwrap().running = false;
    d.id += 1;
    d.rondb_running_since = d.id;
    let a = plan(&d, &s);
    assert!(
        !a.iter().any(|k| k.name() == "StopDataNode"),
        "{:?}",
        kinds(&a)
    );
    assert!(a
        .iter()
        .any(|k| matches!(k, ActionKind::StartDataNode { vm, initial: false, .. } if *vm == down)));
}

#[test]
fn an_empty_replica_starts_initial_only_from_a_started_peer() {
    let d = DesiredState::example();
    let mut s = at_desired(&d);
    let members: Vec<String> = s
        .vms
        .values()
        .filter(|v| v.node_group == Some(0))
        .map(|v| v.name.clone())
        .collect();
    for m in &members {
        let v = s.vms.get_mut(m).unwrap();
        v.running = false;
        v.has_data = false;
    }
    // Node group 0 held data and lost every copy: no empty start, the cluster is stuck.
    let a = plan(&d, &s);
    assert!(
        !a.iter()
            .any(|k| matches!(k, ActionKind::StartDataNode { node_group: 0, .. })),
        "{:?}",
        kinds(&a)
    );
    // Said first, as what it is, with the way out in its text.
    let left = diff(&d, &s);
    assert_eq!(
        left.first(),
        Some(&crate::planner::Difference::NodeGroupLost { node_group: 0 }),
        "{left:?}"
    );
    assert!(left[0].to_string().contains("RestoreFromBackup"));
    // With one peer started, the other copies from it.
    s.vms.get_mut(&members[0]).unwrap().running = true;
    s.vms.get_mut(&members[0]).unwrap().has_data = true;
    let a = plan(&d, &s);
    assert!(a.iter().any(
        |k| matches!(k, ActionKind::StartDataNode { vm, initial: true, .. } if *vm == members[1])
    ));
}

#[test]
fn an_upgrade_installs_everywhere_first_and_waits_for_the_mgmds() {
    let mut d = DesiredState::example();
    let s = at_desired(&d);
    d.id += 1;
    d.rondb_version = "22.10.2".into();
    let a = plan(&d, &s);
    assert!(
        a.iter().all(|k| k.name() == "InstallSoftware"),
        "{:?}",
        kinds(&a)
    );
    assert_eq!(a.len(), s.vms.len());
}

#[test]
fn scaling_mysqlds_to_zero_keeps_one_running_until_the_others_are_gone() {
    let mut d = DesiredState::example();
    d.num_managed_mysqld_vms = 3;
    let s = at_desired(&d);
    d.id += 1;
    d.num_managed_mysqld_vms = 0;
    let a = plan(&d, &s);
    let stops = a.iter().filter(|k| k.name() == "StopMysqld").count();
    assert_eq!(stops, 2, "{:?}", kinds(&a));
}

#[test]
fn in_flight_actions_hold_their_vm() {
    let mut d = DesiredState::example();
    let mut s = at_desired(&d);
    d.id += 1;
    d.rondb_version = "22.10.2".into();
    let first = plan(&d, &s);
    for (i, k) in first.iter().enumerate() {
        s.apply(&Event::ActionStarted(crate::actions::Action {
            op_id: i as u64,
            kind: k.clone(),
        }));
    }
    assert!(plan(&d, &s).is_empty(), "{:?}", kinds(&plan(&d, &s)));
}

#[test]
fn agent_upgrades_go_one_vm_at_a_time_and_the_leaders_vm_last() {
    let old = DesiredState::example();
    let mut s = at_desired(&old);
    let mut d = old.clone();
    d.id += 1;
    d.ndb_agent_version = "9.9".into();
    let leader = s.vms.keys().next().cloned().unwrap();
    s.apply(&crate::model::Event::LeaderChanged { vm: leader.clone() });
    let mut upgraded = vec![];
    for _ in 0..s.vms.len() {
        let actions = plan(&d, &s);
        assert_eq!(actions.len(), 1, "one agent at a time: {actions:?}");
        let ActionKind::UpgradeAgent { vm, .. } = &actions[0] else {
            panic!("expected an agent upgrade, got {actions:?}");
        };
        upgraded.push(vm.clone());
        if let Some(v) = s.vms.get_mut(vm) {
            v.agent_version = "9.9".into();
        }
    }
    assert_eq!(
        upgraded.last(),
        Some(&leader),
        "the leader's VM goes last: {upgraded:?}"
    );
    assert!(plan(&d, &s).is_empty());
}

fn creates_in_group(actions: &[ActionKind], g: u32) -> usize {
    actions
        .iter()
        .filter(|k| matches!(k, ActionKind::CreateVm { node_group: Some(x), .. } if *x == g))
        .count()
}

#[test]
fn a_lost_replica_is_replaced_from_its_peer() {
    let d = DesiredState::example();
    let mut s = at_desired(&d);
    let lost = s
        .vms_of(Role::Ndbd)
        .find(|v| v.node_group == Some(0))
        .map(|v| v.name.clone())
        .unwrap();
    s.vms.remove(&lost);
    assert_eq!(creates_in_group(&plan(&d, &s), 0), 1);
    assert!(!diff(&d, &s)
        .iter()
        .any(|x| matches!(x, Difference::NodeGroupLost { .. })));
}

#[test]
fn a_node_group_that_lost_every_replica_is_never_recreated_empty() {
    let d = DesiredState::example();
    let mut s = at_desired(&d);
    let group0: Vec<String> = s
        .vms_of(Role::Ndbd)
        .filter(|v| v.node_group == Some(0))
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(group0.len(), 2);
    for n in &group0 {
        s.vms.remove(n);
    }
    let actions = plan(&d, &s);
    assert_eq!(creates_in_group(&actions, 0), 0, "{:?}", kinds(&actions));
    let left = diff(&d, &s);
    assert_eq!(left[0], Difference::NodeGroupLost { node_group: 0 });
    let text = left[0].to_string();
    assert!(
        text.contains("node group 0") && text.contains("RestoreFromBackup"),
        "{text}"
    );
    // The other node group is untouched: nothing to do there.
    assert_eq!(creates_in_group(&actions, 1), 0);
}
