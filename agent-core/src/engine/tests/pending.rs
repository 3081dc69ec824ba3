//! Pending desired states: queued while working, accepted when the current one is reached,
//! validated again then and dropped with the reason when no longer valid.

use super::*;
use crate::desired::{BackupSpec, SinkType};

fn next(d: &DesiredState) -> DesiredState {
    let mut n = d.clone();
    n.id = d.id + 1;
    n.num_managed_api_vms = d.num_managed_api_vms + 1;
    n
}

#[test]
fn a_state_submitted_while_working_waits_and_is_accepted_once_the_current_one_is_reached() {
    let (d, mut e, _, op) = restarting_mysqld();
    let d2 = next(&d);
    assert_eq!(
        e.step(secs(31), Input::Submit(Box::new(d2.clone()))),
        vec![
            Command::Append(vec![Event::Queued(d2.clone())]),
            Command::Verdict(Ok(Submission::Queued)),
        ]
    );
    assert_eq!(e.state().accepted.as_ref().map(|x| x.id), Some(d.id));
    assert_eq!(
        e.step(
            secs(35),
            Input::ActionDone {
                op_id: op,
                result: Ok(Outcome::Done)
            }
        ),
        vec![
            Command::Append(vec![Event::ActionSucceeded {
                op_id: op,
                outcome: Outcome::Done
            }]),
            Command::Append(vec![Event::ReconciliationChanged {
                state: AT_DESIRED_STATE,
                error: None
            }]),
            Command::Report {
                state: AT_DESIRED_STATE,
                error: None
            },
            Command::Append(vec![Event::Accepted(d2.clone())]),
            Command::Observe,
        ]
    );
    assert_eq!(e.state().accepted.as_ref(), Some(&d2));
    assert_eq!(e.state().pending, None);
}

#[test]
fn a_submission_not_above_the_pending_id_is_rejected_and_changes_nothing() {
    let (d, mut e, _, _) = restarting_mysqld();
    let d2 = next(&d);
    e.step(secs(31), Input::Submit(Box::new(d2.clone())));
    let before = e.state().clone();
    // The same Id with other content (the same state again is a retry, answered as before).
    let mut other = d2;
    other.num_managed_api_vms += 1;
    let cmds = e.step(secs(32), Input::Submit(Box::new(other)));
    let [Command::Verdict(Err(v))] = cmds.as_slice() else {
        panic!("expected a rejection alone, got {cmds:?}");
    };
    assert!(
        v.iter()
            .any(|x| x.field == "Id" && x.rule.contains("pending")),
        "{v:?}"
    );
    assert_eq!(e.state(), &before);
}

#[test]
fn a_state_submitted_again_unchanged_gets_its_first_answer_and_records_nothing() {
    // A client whose reply was lost submits again: queued while working, ...
    let (d, mut e, _, _) = restarting_mysqld();
    let d2 = next(&d);
    e.step(secs(31), Input::Submit(Box::new(d2.clone())));
    let before = e.state().clone();
    assert_eq!(
        e.step(secs(32), Input::Submit(Box::new(d2))),
        vec![Command::Verdict(Ok(Submission::Queued))]
    );
    assert_eq!(e.state(), &before);
    // ... and accepted at rest.
    let (d, mut e) = resting();
    let before = e.state().clone();
    assert_eq!(
        e.step(secs(1), Input::Submit(Box::new(d))),
        vec![Command::Verdict(Ok(Submission::Accepted))]
    );
    assert_eq!(e.state(), &before);
    assert!(!e.is_busy());
}

#[test]
fn an_invalid_desired_state_at_rest_is_rejected_and_changes_nothing() {
    let (d, mut e) = resting();
    let before = e.state().clone();
    let mut bad = d.clone();
    bad.num_node_groups = 0;
    let cmds = e.step(secs(1), Input::Submit(Box::new(bad)));
    assert!(
        matches!(cmds.as_slice(), [Command::Verdict(Err(_))]),
        "{cmds:?}"
    );
    assert_eq!(e.state(), &before);
    assert!(!e.is_busy());
}

#[test]
fn a_pending_state_that_became_invalid_is_dropped_with_the_reason() {
    // A committed state as a new leader finds it: working, a restart in flight, and a
    // pending state that changes RestoreFromBackup, queued before RonDB first ran.
    let (d, mut s) = settled();
    let vm = mysqld_vm(&s);
    if let Some(v) = s.vms.get_mut(&vm) {
        v.running = false;
    }
    let kind = crate::planner::plan(&d, &s)
        .into_iter()
        .next()
        .expect("a restart");
    s.apply(&Event::ReconciliationChanged {
        state: WORKING_TOWARDS_DESIRED_STATE,
        error: None,
    });
    let op = s.next_op_id;
    s.apply(&Event::ActionStarted(Action {
        op_id: op,
        kind: kind.clone(),
    }));
    let mut d2 = next(&d);
    d2.restore_from_backup = Some(BackupSpec {
        id: 7,
        sink_type: SinkType::Local,
        sink_parameters: Default::default(),
    });
    s.apply(&Event::Queued(d2.clone()));
    assert!(s.rondb_has_run);
    let mut e = Engine::new(s, policy());
    e.step(
        secs(0),
        Input::Leading {
            vm: "mgmd-1".into(),
        },
    );
    let world = with_dead_program(e.state(), &vm);
    let call = prepare(
        &d,
        e.state(),
        &Action {
            op_id: op,
            kind: kind.clone(),
        },
    );
    assert_eq!(
        e.step(secs(0), Input::Observed(Ok(world.clone()))),
        vec![
            Command::Append(vec![Event::Observed {
                vms: world.vms,
                programs: world.programs
            }]),
            Command::Run {
                action: Action { op_id: op, kind },
                call
            },
            Command::WakeAt(OBSERVE)
        ]
    );
    let cmds = e.step(
        secs(3),
        Input::ActionDone {
            op_id: op,
            result: Ok(Outcome::Done),
        },
    );
    let Some(Command::Append(evs)) = cmds.get(3) else {
        panic!("{cmds:?}");
    };
    let [Event::PendingDropped { id, reason }] = evs.as_slice() else {
        panic!("{evs:?}");
    };
    assert_eq!(*id, d2.id);
    assert!(reason.contains("RestoreFromBackup"), "{reason}");
    assert_eq!(cmds.get(4), Some(&Command::WakeAt(secs(3) + OBSERVE)));
    assert_eq!(e.state().pending, None);
    assert_eq!(e.state().accepted.as_ref(), Some(&d));
}
