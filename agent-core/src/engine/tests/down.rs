//! VMs that are down (a stopped machine, a dead agent) are started again with their disks,
//! never replaced at once: only after `VmDownGraceSeconds`, and only while their node group
//! keeps a started replica to copy from. A node group whose every replica is down is waited
//! for.

use super::*;
use crate::model::Role;

/// The data-node VMs of node group `g`, in name order.
fn group(e: &Engine, g: u32) -> Vec<String> {
    e.state()
        .vms_of(Role::Ndbd)
        .filter(|v| v.node_group == Some(g))
        .map(|v| v.name.clone())
        .collect()
}

/// The world with `vms` down: listed by the provider, their agents silent.
fn with_down(s: &ClusterState, vms: &[String]) -> Observation {
    let mut o = world_of(s);
    for v in o.vms.iter_mut().filter(|v| vms.contains(&v.name)) {
        v.state = VmState::Down;
    }
    o.programs.retain(|name, _| !vms.contains(name));
    o
}

/// A leader that just took over a settled cluster whose grace period is `grace` seconds.
fn leading(grace: u64) -> (DesiredState, Engine) {
    let (mut d, mut s) = settled();
    d.vm_down_grace_seconds = grace;
    if let Some(a) = s.accepted.as_mut() {
        a.vm_down_grace_seconds = grace;
    }
    let mut e = Engine::new(s, policy());
    leads(&mut e, secs(0), "mgmd-1");
    (d, e)
}

fn runs(cmds: &[Command]) -> Vec<&BackendCall> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Run { call, .. } => Some(call),
            _ => None,
        })
        .collect()
}

#[test]
fn a_vm_down_is_started_again_and_its_data_node_restarts_without_initial() {
    let (d, mut e) = leading(300);
    let vm = group(&e, 0)[0].clone();
    let world = with_down(e.state(), std::slice::from_ref(&vm));
    let op = e.state().next_op_id;
    let cmds = e.step(secs(0), Input::Observed(Ok(world.clone())));
    let mut want = vec![
        Command::Append(vec![Event::Observed {
            vms: world.vms,
            programs: world.programs,
        }]),
        Command::Append(vec![Event::ReconciliationChanged {
            state: WORKING_TOWARDS_DESIRED_STATE,
            error: None,
        }]),
    ];
    want.extend(starts(
        &e,
        &d,
        op,
        ActionKind::StartVm {
            vm: vm.clone(),
            role: Role::Ndbd,
        },
    ));
    want.push(Command::WakeAt(OBSERVE));
    assert_eq!(cmds, want);
    assert!(e.state().vms[&vm].down && !e.state().vms[&vm].running);

    // Back up: its data node starts from its own file system (a restart, not --initial).
    let mut info = world_of(e.state())
        .vms
        .into_iter()
        .find(|v| v.name == vm)
        .expect("listed");
    info.state = VmState::Running;
    let cmds = e.step(
        secs(20),
        Input::ActionDone {
            op_id: op,
            result: Ok(Outcome::VmStarted(info.clone())),
        },
    );
    assert_eq!(
        cmds[0],
        Command::Append(vec![Event::ActionSucceeded {
            op_id: op,
            outcome: Outcome::VmStarted(info)
        }])
    );
    assert!(!e.state().vms[&vm].down);
    let start = runs(&cmds);
    assert!(
        matches!(start.as_slice(), [BackendCall::StartProgram { vm: v, spec }] if *v == vm && !spec.initial),
        "{cmds:?}"
    );
}

#[test]
fn past_the_grace_period_a_down_replica_with_a_started_peer_is_given_up_and_replaced() {
    let (_, mut e) = leading(60);
    let vm = group(&e, 0)[0].clone();
    let world = with_down(e.state(), std::slice::from_ref(&vm));
    let op = e.state().next_op_id;
    e.step(secs(0), Input::Observed(Ok(world.clone())));
    // Within the grace period nothing but the start is tried.
    assert!(runs(&e.step(secs(30), Input::Tick))
        .iter()
        .all(|c| matches!(c, BackendCall::StartVm { .. })));
    // The start fails after the grace period has passed.
    e.step(
        secs(61),
        Input::ActionDone {
            op_id: op,
            result: Err(BackendError::transient("docker start: no such host").on(vm.clone())),
        },
    );
    let cmds = e.step(secs(61), Input::Observed(Ok(world)));
    assert_eq!(
        cmds[0],
        Command::Append(vec![Event::VmAbandoned {
            vm: vm.clone(),
            reason: "down for 61 s, longer than VmDownGraceSeconds (60 s)".into()
        }])
    );
    assert!(!e.state().vms.contains_key(&vm));
    assert_eq!(e.state().abandoned.get(&vm), Some(&Role::Ndbd));
    let calls = runs(&cmds);
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, BackendCall::DeleteVm { vm: v } if *v == vm)),
        "{cmds:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, BackendCall::CreateVm(spec) if spec.role == Role::Ndbd)),
        "a replacement data-node VM: {cmds:?}"
    );
}

#[test]
fn a_node_group_whose_every_replica_is_down_is_waited_for_never_replaced() {
    let (d, mut e) = leading(60);
    let vms = group(&e, 0);
    let world = with_down(e.state(), &vms);
    let cmds = e.step(secs(0), Input::Observed(Ok(world.clone())));
    let started: Vec<u64> = e.state().in_flight.keys().copied().collect();
    assert_eq!(runs(&cmds).len(), vms.len(), "one StartVm per VM: {cmds:?}");
    let failures = started
        .iter()
        .map(|op| (*op, Err(BackendError::transient("host unreachable"))))
        .collect();
    e.step(secs(120), Input::ActionsDone(failures));
    let cmds = e.step(secs(120), Input::Observed(Ok(world)));
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Append(evs) if evs.iter().any(|ev| matches!(ev, Event::VmAbandoned { .. })))),
        "{cmds:?}"
    );
    assert!(
        runs(&cmds)
            .iter()
            .all(|c| matches!(c, BackendCall::StartVm { .. })),
        "only starts: {cmds:?}"
    );
    assert!(vms.iter().all(|v| e.state().vms.contains_key(v)));
    assert!(
        crate::planner::diff(&d, e.state()).contains(&crate::planner::Difference::NodeGroupDown {
            node_group: 0,
            vms: vms.clone()
        }),
        "{:?}",
        crate::planner::diff(&d, e.state())
    );
}
