//! Retries and `ERROR_STATE`: a failure is looked at before the action is tried again; the
//! policy's limit ends the reconciliation, after the running actions finish.

use super::*;

fn fail(e: &mut Engine, now: Duration, op: u64) -> Vec<Command> {
    e.step(
        now,
        Input::ActionDone {
            op_id: op,
            result: failed("mysqld exited with code 1"),
        },
    )
}

fn failure_event(op: u64) -> Command {
    Command::Append(vec![Event::ActionFailed {
        op_id: op,
        error: "mysqld exited with code 1".into(),
        drift: false,
    }])
}

#[test]
fn a_failure_is_observed_before_the_action_is_retried_under_a_new_operation_id() {
    let (d, mut e, vm, op) = restarting_mysqld();
    let kind = start_mysqld(&e, &vm, op);
    assert_eq!(
        fail(&mut e, secs(31), op),
        vec![failure_event(op), Command::Observe]
    );
    assert_eq!(e.state().failures.get(&kind.retry_key()), Some(&1));
    let dead = with_dead_program(e.state(), &vm);
    assert_eq!(
        e.step(secs(32), Input::Observed(Ok(dead))),
        starts(&e, &d, op + 1, kind)
    );
}

#[test]
fn the_last_allowed_failure_ends_the_reconciliation_in_error_state() {
    let (_, mut e, vm, op) = restarting_mysqld();
    let kind = start_mysqld(&e, &vm, op);
    fail(&mut e, secs(31), op);
    e.step(
        secs(32),
        Input::Observed(Ok(with_dead_program(e.state(), &vm))),
    );
    assert_eq!(
        fail(&mut e, secs(40), op + 1),
        vec![failure_event(op + 1), Command::Observe]
    );
    let error = Some(format!(
        "{} failed 2 time(s) (limit 2): mysqld exited with code 1",
        Action {
            op_id: op + 1,
            kind
        }
    ));
    assert_eq!(
        e.step(
            secs(41),
            Input::Observed(Ok(with_dead_program(e.state(), &vm)))
        ),
        vec![
            Command::Append(vec![Event::ReconciliationChanged {
                state: ERROR_STATE,
                error: error.clone(),
            }]),
            Command::Report {
                state: ERROR_STATE,
                error,
            },
            Command::WakeAt(secs(41) + OBSERVE * 2),
        ]
    );
    assert!(!e.is_busy());
}

#[test]
fn after_giving_up_the_running_actions_finish_before_error_state_is_reported() {
    let (d, s) = settled();
    let mut e = Engine::new(
        s,
        Box::new(StandardPolicy {
            max_attempts: 1,
            ..StandardPolicy::default()
        }),
    );
    e.step(
        secs(0),
        Input::Leading {
            vm: "mgmd-1".into(),
        },
    );
    let names: Vec<String> = e
        .state()
        .vms_of(crate::model::Role::Mysqld)
        .map(|v| v.name.clone())
        .collect();
    let mut world = world_of(e.state());
    for n in &names {
        world.programs.insert(n.clone(), ProgramStatus::default());
    }
    let first = e.state().next_op_id;
    e.step(secs(0), Input::Observed(Ok(world.clone())));
    assert_eq!(
        e.state().in_flight.len(),
        names.len(),
        "one restart per MySQLd"
    );
    let _ = d;
    // The first restart fails: the limit is reached, nothing new starts, the other runs on.
    assert_eq!(
        fail(&mut e, secs(5), first),
        vec![failure_event(first), Command::Observe]
    );
    assert_eq!(e.step(secs(6), Input::Observed(Ok(world))), vec![]);
    assert!(e.is_busy());
    let cmds = e.step(
        secs(9),
        Input::ActionDone {
            op_id: first + 1,
            result: Ok(Outcome::Done),
        },
    );
    assert_eq!(
        cmds[0],
        Command::Append(vec![Event::ActionSucceeded {
            op_id: first + 1,
            outcome: Outcome::Done
        }])
    );
    assert!(
        matches!(&cmds[2], Command::Report { state: ERROR_STATE, error: Some(e) } if e.contains("failed 1 time(s) (limit 1)")),
        "{cmds:?}"
    );
    assert_eq!(cmds.len(), 4, "{cmds:?}");
}

#[test]
fn drift_is_not_an_attempt_and_never_gives_up() {
    let (_, mut e, vm, op) = restarting_mysqld();
    let kind = start_mysqld(&e, &vm, op);
    let cmds = e.step(
        secs(31),
        Input::ActionDone {
            op_id: op,
            result: Err(BackendError::vm_gone(vm.clone())),
        },
    );
    assert_eq!(
        cmds,
        vec![
            Command::Append(vec![Event::ActionFailed {
                op_id: op,
                error: BackendError::vm_gone(vm.clone()).to_string(),
                drift: true,
            }]),
            Command::Observe
        ]
    );
    assert_eq!(e.state().failures.get(&kind.retry_key()), None);
}

/// The provider may have made the VM of a failed creation (a cloud front killed after
/// `terraform apply` made it, an answer lost on the way). Its retry makes a VM of another
/// name, so the failed one is deleted rather than leaked, and forgotten once deleted.
#[test]
fn a_failed_vm_creation_is_deleted_never_leaked() {
    let (d, mut s) = settled();
    let create = ActionKind::CreateVm {
        vm: "mysqld-8".into(),
        role: crate::model::Role::Mysqld,
        zone: "a".into(),
        vm_type: crate::desired::VmType::Mini,
        storage_gib: 5,
        temporary: false,
        node_group: None,
        agent_version: d.ndb_agent_version.clone(),
        agent_clock: 1,
        seq: 8,
    };
    s.apply(&Event::ActionStarted(Action {
        op_id: 70,
        kind: create,
    }));
    s.apply(&Event::ActionFailed {
        op_id: 70,
        error: "cloud front did not answer create VM".into(),
        drift: false,
    });
    let delete = ActionKind::DeleteVm {
        vm: "mysqld-8".into(),
        role: crate::model::Role::Mysqld,
    };
    assert!(
        crate::planner::plan(&d, &s).contains(&delete),
        "{:?}",
        crate::planner::plan(&d, &s)
    );
    s.apply(&Event::ActionStarted(Action {
        op_id: 71,
        kind: delete.clone(),
    }));
    s.apply(&Event::ActionSucceeded {
        op_id: 71,
        outcome: crate::model::Outcome::Done,
    });
    assert!(s.abandoned.is_empty());
    assert!(!crate::planner::plan(&d, &s).contains(&delete));
}
