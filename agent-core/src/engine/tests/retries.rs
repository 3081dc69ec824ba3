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
    // The program may run after all (a start that timed out) until its agent tells.
    assert!(e.state().vms[&vm].start_unconfirmed);
    let dead = with_dead_program(e.state(), &vm);
    let mut want = vec![recorded(&dead)];
    let cmds = e.step(secs(32), Input::Observed(Ok(dead)));
    assert!(!e.state().vms[&vm].start_unconfirmed);
    want.extend(starts(&e, &d, op + 1, kind));
    assert_eq!(cmds, want);
}

#[test]
fn no_slot_moves_into_config_ini_while_a_failed_management_server_start_may_have_left_it_running() {
    // A cluster being created: a management-server VM whose start just failed (timed out),
    // and a data-node VM with a slot still to bind. With no management server known to run
    // and no data node running, slot changes go into config.ini; but a server that does
    // run after all would never load that file, and the data node would be refused its
    // node id as deactivated.
    let (d, mut s) = settled();
    for v in s.vms.values_mut() {
        v.running = false;
        v.has_data = false;
    }
    let mgmd = s
        .vms_of(crate::model::Role::Mgmd)
        .map(|v| v.name.clone())
        .next()
        .expect("a management server");
    let ndbd = s
        .vms_of(crate::model::Role::Ndbd)
        .map(|v| v.name.clone())
        .next()
        .expect("a data node");
    if let Some(slot) = s
        .slots
        .values_mut()
        .find(|x| x.host.as_deref() == Some(ndbd.as_str()))
    {
        slot.active = false;
    }
    // The server's start was under way when this leader took over (it was started before
    // the data node's VM existed).
    let node_id = s
        .slots
        .values()
        .find(|x| x.host.as_deref() == Some(mgmd.as_str()))
        .map(|x| x.node_id)
        .expect("the management server's slot");
    let start = s.next_op_id;
    s.next_op_id += 1;
    s.in_flight.insert(
        start,
        Action {
            op_id: start,
            kind: ActionKind::StartMgmd {
                vm: mgmd.clone(),
                node_id,
                version: d.rondb_version.clone(),
                initial: true,
                clock: d.rondb_running_since,
            },
        },
    );
    let mut e = Engine::new(s, policy());
    leads(&mut e, secs(0), "bootstrap");
    e.step(secs(0), Input::Observed(Ok(world_of(e.state()))));
    assert!(e.state().in_flight.contains_key(&start));
    let activation = |e: &Engine| {
        e.state().in_flight.values().any(
            |a| matches!(&a.kind, ActionKind::ActivateNode { vm, via: None, .. } if *vm == ndbd),
        )
    };
    assert!(
        !activation(&e),
        "nothing changes slots while the server starts"
    );
    e.step(
        secs(61),
        Input::ActionDone {
            op_id: start,
            result: failed("ndb_mgmd did not answer within 60 s"),
        },
    );
    assert!(e.state().vms[&mgmd].start_unconfirmed);
    // The look after the failure misses the server's agent (a busy machine): what runs
    // there is not known.
    e.step(
        secs(62),
        Input::Observed(Ok(with_silent_agent(e.state(), &mgmd))),
    );
    assert!(e.state().vms[&mgmd].start_unconfirmed);
    assert!(
        !activation(&e),
        "a slot was activated in config.ini behind a management server that may run"
    );
    // Its agent tells: the server does not run. Then config.ini is the place again.
    let mut world = world_of(e.state());
    if let Some(p) = world.programs.get_mut(&mgmd) {
        p.running = false;
    }
    e.step(secs(63), Input::Observed(Ok(world)));
    assert!(!e.state().vms[&mgmd].start_unconfirmed);
    assert!(activation(&e), "{:?}", e.state().in_flight);
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
    let dead = with_dead_program(e.state(), &vm);
    let error = Some(format!(
        "{} failed 2 time(s) (limit 2): mysqld exited with code 1",
        Action {
            op_id: op + 1,
            kind
        }
    ));
    assert_eq!(
        e.step(secs(41), Input::Observed(Ok(dead.clone()))),
        vec![
            recorded(&dead),
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
    assert_eq!(
        e.step(secs(6), Input::Observed(Ok(world.clone()))),
        vec![recorded(&world)]
    );
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
