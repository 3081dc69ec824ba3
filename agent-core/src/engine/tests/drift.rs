//! Drift: at rest the world is looked at every period; what changed behind the leader's back
//! (a dead program, a lost VM) is recorded and repaired. While working, a periodic look
//! holds planning back until it is answered.

use super::*;

#[test]
fn at_rest_the_world_is_observed_every_period_and_a_match_changes_nothing() {
    let (_, mut e) = resting();
    let before = e.state().clone();
    assert_eq!(e.step(OBSERVE, Input::Tick), vec![Command::Observe]);
    let world = world_of(e.state());
    assert_eq!(
        e.step(OBSERVE, Input::Observed(Ok(world))),
        vec![Command::WakeAt(OBSERVE * 2)]
    );
    assert_eq!(e.state(), &before);
}

#[test]
fn a_program_dead_at_rest_is_recorded_and_restarted() {
    // The exact commands are asserted inside the fixture.
    let (_, e, vm, op) = restarting_mysqld();
    assert_eq!(e.state().reconciliation, WORKING_TOWARDS_DESIRED_STATE);
    assert!(!e.state().vms[&vm].running);
    assert!(e.state().in_flight.contains_key(&op));
}

#[test]
fn a_vm_lost_at_rest_is_recorded_and_replaced() {
    let (_, mut e) = resting();
    let vm = mysqld_vm(e.state());
    assert_eq!(e.step(OBSERVE, Input::Tick), vec![Command::Observe]);
    let mut world = world_of(e.state());
    world.vms.retain(|v| v.name != vm);
    world.programs.remove(&vm);
    let cmds = e.step(OBSERVE, Input::Observed(Ok(world.clone())));
    assert_eq!(
        cmds[..2],
        [
            Command::Append(vec![Event::Observed {
                vms: world.vms,
                programs: world.programs
            }]),
            Command::Append(vec![Event::ReconciliationChanged {
                state: WORKING_TOWARDS_DESIRED_STATE,
                error: None
            }]),
        ]
    );
    assert!(!e.state().vms.contains_key(&vm));
    assert!(
        matches!(&cmds[3], Command::Run { call: BackendCall::CreateVm(spec), .. } if spec.role == crate::model::Role::Mysqld),
        "{cmds:?}"
    );
}

#[test]
fn while_working_a_periodic_observation_holds_planning_until_answered() {
    let (_, mut e, _, op) = restarting_mysqld();
    assert_eq!(
        e.step(OBSERVE * 2, Input::Tick),
        vec![Command::Observe, Command::WakeAt(OBSERVE * 3)]
    );
    // The restart finishes meanwhile: recorded, but the round does not end yet.
    assert_eq!(
        e.step(
            secs(61),
            Input::ActionDone {
                op_id: op,
                result: Ok(Outcome::Done)
            }
        ),
        vec![Command::Append(vec![Event::ActionSucceeded {
            op_id: op,
            outcome: Outcome::Done
        }])]
    );
    let world = world_of(e.state());
    assert_eq!(
        e.step(secs(62), Input::Observed(Ok(world))),
        vec![
            Command::Append(vec![Event::ReconciliationChanged {
                state: AT_DESIRED_STATE,
                error: None
            }]),
            Command::Report {
                state: AT_DESIRED_STATE,
                error: None
            },
            Command::WakeAt(secs(92)),
        ]
    );
}

#[test]
fn an_observation_that_fails_keeps_what_is_known() {
    let (_, mut e) = resting();
    let before = e.state().clone();
    e.step(OBSERVE, Input::Tick);
    assert_eq!(
        e.step(
            OBSERVE,
            Input::Observed(Err(BackendError::transient("provider unreachable")))
        ),
        vec![Command::WakeAt(OBSERVE * 2)]
    );
    assert_eq!(e.state(), &before);
}

/// The agent's driver writes the appends of one step that follow each other as one log
/// entry: a look at rest and what it decides (back to work, a replacement started) reach
/// every replica together, so no status shows the look under the old `AT_DESIRED_STATE`.
#[test]
fn a_look_and_what_it_decides_are_one_append_once_coalesced() {
    let (_, mut e) = resting();
    let vm = mysqld_vm(e.state());
    assert_eq!(e.step(OBSERVE, Input::Tick), vec![Command::Observe]);
    let mut world = world_of(e.state());
    world.vms.retain(|v| v.name != vm);
    world.programs.remove(&vm);
    let cmds = coalesce_appends(e.step(OBSERVE, Input::Observed(Ok(world.clone()))));
    let Command::Append(events) = &cmds[0] else {
        panic!("{cmds:?}")
    };
    assert_eq!(
        events[..2],
        [
            Event::Observed {
                vms: world.vms,
                programs: world.programs
            },
            Event::ReconciliationChanged {
                state: WORKING_TOWARDS_DESIRED_STATE,
                error: None
            },
        ]
    );
    assert!(
        matches!(&events[2], Event::ActionStarted(a) if matches!(a.kind, ActionKind::CreateVm { .. })),
        "{events:?}"
    );
    assert!(matches!(cmds[1], Command::Run { .. }), "{cmds:?}");
}

#[test]
fn only_appends_that_follow_each_other_are_merged_in_order() {
    let ev = |id| Event::PendingDropped {
        id,
        reason: String::new(),
    };
    let merged = coalesce_appends(vec![
        Command::Append(vec![ev(1)]),
        Command::Append(vec![ev(2), ev(3)]),
        Command::Observe,
        Command::Append(vec![ev(4)]),
        Command::WakeAt(secs(1)),
    ]);
    assert_eq!(
        merged,
        vec![
            Command::Append(vec![ev(1), ev(2), ev(3)]),
            Command::Observe,
            Command::Append(vec![ev(4)]),
            Command::WakeAt(secs(1)),
        ]
    );
}
