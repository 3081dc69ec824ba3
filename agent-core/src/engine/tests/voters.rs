//! AT_DESIRED_STATE means fault tolerant: while agents the membership wants as Raft voters
//! do not vote yet, a reconciliation with nothing left to do waits for them rather than
//! report the desired state reached.

use super::*;

fn with_voters_missing(s: &ClusterState, vms: &[&str]) -> Observation {
    let mut o = world_of(s);
    o.voters_missing = Some(vms.iter().map(|v| v.to_string()).collect());
    o
}

fn reports(cmds: &[Command]) -> Vec<ReconciliationState> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Report { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

#[test]
fn the_desired_state_is_reported_reached_only_once_every_wanted_voter_votes() {
    let mut e = new_leader();
    // Everything is in place but two agents are still learners.
    let cmds = e.step(
        secs(0),
        Input::Observed(Ok(with_voters_missing(
            e.state(),
            &["ndbd-0-2", "ndbd-1-3"],
        ))),
    );
    assert!(reports(&cmds).is_empty(), "{cmds:?}");
    assert_eq!(e.state().reconciliation, WORKING_TOWARDS_DESIRED_STATE);
    assert_eq!(
        cmds.last(),
        Some(&Command::WakeAt(Duration::from_millis(500)))
    );
    assert!(!cmds.iter().any(|c| matches!(c, Command::Run { .. })));
    // It looks again soon; one still does not vote.
    assert_eq!(
        e.step(Duration::from_millis(500), Input::Tick).first(),
        Some(&Command::Observe)
    );
    let cmds = e.step(
        Duration::from_millis(600),
        Input::Observed(Ok(with_voters_missing(e.state(), &["ndbd-1-3"]))),
    );
    assert!(reports(&cmds).is_empty(), "{cmds:?}");
    e.step(secs(1) + Duration::from_millis(100), Input::Tick);
    // Both vote now: reached.
    let cmds = e.step(
        secs(2),
        Input::Observed(Ok(with_voters_missing(e.state(), &[]))),
    );
    assert_eq!(reports(&cmds), vec![AT_DESIRED_STATE], "{cmds:?}");
    assert_eq!(e.state().reconciliation, AT_DESIRED_STATE);
}

#[test]
fn voters_that_never_come_end_the_reconciliation_in_error_state_naming_them() {
    let mut e = new_leader();
    e.step(
        secs(0),
        Input::Observed(Ok(with_voters_missing(e.state(), &["ndbd-0-2"]))),
    );
    let cmds = e.step(
        PATIENCE,
        Input::Observed(Ok(with_voters_missing(e.state(), &["ndbd-0-2"]))),
    );
    assert_eq!(reports(&cmds), vec![ERROR_STATE], "{cmds:?}");
    let error = e.state().last_error.clone().unwrap_or_default();
    assert!(
        error.contains("ndbd-0-2") && error.contains("Raft voters"),
        "{error}"
    );
}

#[test]
fn a_look_that_cannot_check_the_voters_keeps_the_last_answer() {
    let mut e = new_leader();
    e.step(
        secs(0),
        Input::Observed(Ok(with_voters_missing(e.state(), &["ndbd-0-2"]))),
    );
    e.step(Duration::from_millis(500), Input::Tick);
    // No answer about the voters this time (`None`): still waiting.
    let cmds = e.step(secs(1), Input::Observed(Ok(world_of(e.state()))));
    assert!(reports(&cmds).is_empty(), "{cmds:?}");
}

#[test]
fn after_the_last_action_the_voters_are_looked_at_again_before_reporting() {
    let mut e = new_leader();
    let mysqld = mysqld_vm(e.state());
    let mut world = with_dead_program(e.state(), &mysqld);
    world.voters_missing = Some(BTreeSet::new());
    let cmds = e.step(secs(0), Input::Observed(Ok(world)));
    let op_id = cmds
        .iter()
        .find_map(|c| match c {
            Command::Run { action, .. } => Some(action.op_id),
            _ => None,
        })
        .expect("the dead MySQLd is started again");
    // The action ends: what it did may have changed the group (a VM created brings a new
    // agent), so the leader looks before it reports anything.
    let cmds = e.step(
        secs(1),
        Input::ActionDone {
            op_id,
            result: Ok(Outcome::Done),
        },
    );
    assert!(reports(&cmds).is_empty(), "{cmds:?}");
    assert!(cmds.contains(&Command::Observe), "{cmds:?}");
    let cmds = e.step(
        secs(1),
        Input::Observed(Ok(with_voters_missing(e.state(), &[]))),
    );
    assert_eq!(reports(&cmds), vec![AT_DESIRED_STATE], "{cmds:?}");
}
