//! Leader change mid-action: a new leader starts from the committed state, records itself,
//! looks at the world and resumes what was in flight under the same operation ids.

use super::*;

#[test]
fn a_new_leader_resumes_the_action_in_flight_under_its_operation_id() {
    let (d, old, _, op) = restarting_mysqld();
    let committed = old.state().clone();
    let action = committed.in_flight[&op].clone();
    let mut e = Engine::new(committed, policy());
    leads(&mut e, secs(40), "ndbd-0-2");
    let world = with_dead_program(e.state(), &mysqld_vm(e.state()));
    let call = prepare(&d, e.state(), &action);
    // Resumed, not started again: no new operation id; only the new leader's first look
    // is appended.
    assert_eq!(
        e.step(secs(40), Input::Observed(Ok(world.clone()))),
        vec![
            Command::Append(vec![Event::Observed {
                vms: world.vms,
                programs: world.programs
            }]),
            Command::Run { action, call },
            Command::WakeAt(secs(70))
        ]
    );
    assert_eq!(e.state().next_op_id, op + 1);
}

#[test]
fn the_resumed_action_answered_with_the_first_runs_result_completes_the_round() {
    let (_, old, _, op) = restarting_mysqld();
    let mut e = Engine::new(old.state().clone(), policy());
    e.step(
        secs(40),
        Input::Leading {
            vm: "ndbd-0-2".into(),
        },
    );
    e.step(
        secs(40),
        Input::Observed(Ok(with_dead_program(e.state(), &mysqld_vm(e.state())))),
    );
    let cmds = e.step(
        secs(41),
        Input::ActionDone {
            op_id: op,
            result: Ok(Outcome::Done),
        },
    );
    assert!(
        cmds.contains(&Command::Report {
            state: AT_DESIRED_STATE,
            error: None
        }),
        "{cmds:?}"
    );
    assert!(e.state().in_flight.is_empty());
}

#[test]
fn a_leader_elected_again_records_itself_and_vouches_for_nothing_until_it_looked() {
    let (_, s) = settled();
    assert_eq!(s.leader_vm.as_deref(), Some("mgmd-1"));
    let mut e = Engine::new(s, policy());
    // After a whole-cluster restart the same agent may lead again: the state on record is
    // from before, so it is not vouched for until this leader has looked.
    leads(&mut e, secs(0), "mgmd-1");
    assert!(!e.state().world_seen);
    // A failed look vouches for nothing either.
    e.step(
        secs(1),
        Input::Observed(Err(BackendError::transient(
            "docker ps: connection refused",
        ))),
    );
    assert!(!e.state().world_seen);
}

#[test]
fn a_result_for_an_operation_not_in_flight_is_ignored() {
    let (_, mut e) = resting();
    let before = e.state().clone();
    assert_eq!(
        e.step(
            secs(1),
            Input::ActionDone {
                op_id: 999,
                result: Ok(Outcome::Done)
            }
        ),
        vec![]
    );
    assert_eq!(e.state(), &before);
}

#[test]
fn nothing_to_reconcile_before_a_first_desired_state() {
    let mut e = Engine::new(ClusterState::default(), policy());
    assert_eq!(
        e.step(
            secs(0),
            Input::Leading {
                vm: "bootstrap".into()
            }
        )
        .len(),
        1
    );
    assert!(!e.is_busy());
    assert_eq!(e.step(secs(1000), Input::Tick), vec![]);
}

#[test]
fn after_a_whole_cluster_restart_a_leader_waits_for_silent_agents_before_vouching() {
    let mut e = new_leader();
    let mysqld = mysqld_vm(e.state());
    // The VMs run again but the MySQLd VM's agent does not answer yet: the log says its
    // program runs, which was true before the restart only. Nothing is vouched for, nothing
    // is reported; the leader looks again soon.
    let silent = with_silent_agent(e.state(), &mysqld);
    assert_eq!(
        e.step(secs(1), Input::Observed(Ok(silent))),
        vec![Command::WakeAt(secs(1) + Duration::from_millis(500))]
    );
    assert!(!e.state().world_seen);
    assert_eq!(
        e.step(secs(1) + Duration::from_millis(500), Input::Tick),
        vec![Command::Observe]
    );
    // Now it answers: its program is not running (supervisord does not start it on its own).
    let world = with_dead_program(e.state(), &mysqld);
    let cmds = e.step(secs(2), Input::Observed(Ok(world.clone())));
    assert_eq!(
        cmds.first(),
        Some(&Command::Append(vec![Event::Observed {
            vms: world.vms,
            programs: world.programs
        }]))
    );
    assert!(e.state().world_seen);
    assert!(!e.state().vms[&mysqld].running);
    assert_eq!(e.state().reconciliation, WORKING_TOWARDS_DESIRED_STATE);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Run { action, .. } if action.kind.vm() == Some(&mysqld))),
        "the MySQLd is started again: {cmds:?}"
    );
}

#[test]
fn an_agent_silent_longer_than_the_patience_does_not_keep_the_leader_from_acting() {
    let mut e = new_leader();
    let mysqld = mysqld_vm(e.state());
    let silent = with_silent_agent(e.state(), &mysqld);
    assert_eq!(
        e.step(secs(1), Input::Observed(Ok(silent.clone()))),
        vec![Command::WakeAt(secs(1) + Duration::from_millis(500))]
    );
    // Past the patience the state on record is taken as it is (the VM's next action, or
    // its agent's next answer, corrects it).
    let cmds = e.step(PATIENCE, Input::Observed(Ok(silent.clone())));
    assert_eq!(
        cmds.first(),
        Some(&Command::Append(vec![Event::Observed {
            vms: silent.vms,
            programs: silent.programs
        }]))
    );
    assert!(e.state().world_seen);
}
