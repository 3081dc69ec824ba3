//! Backoff: after `ERROR_STATE` the engine rests longer each failed round (doubling, capped);
//! a new desired state is tried at once and resets it; nothing happens before a deadline.

use super::*;

/// Fails the dead MySQLd's restart until the policy gives up (twice, from an observation
/// asked for at `now`); returns when the engine wants to be woken next.
fn fail_until_error(e: &mut Engine, now: Duration) -> Duration {
    let vm = mysqld_vm(e.state());
    for _ in 0..2 {
        e.step(now, Input::Observed(Ok(with_dead_program(e.state(), &vm))));
        let op = *e
            .state()
            .in_flight
            .keys()
            .next()
            .expect("a restart in flight");
        e.step(
            now,
            Input::ActionDone {
                op_id: op,
                result: failed("no"),
            },
        );
    }
    let cmds = e.step(now, Input::Observed(Ok(with_dead_program(e.state(), &vm))));
    // The failed start's VM is looked at first (recorded), then the error reported.
    assert!(
        matches!(
            cmds.get(2),
            Some(Command::Report {
                state: ERROR_STATE,
                ..
            })
        ),
        "{cmds:?}"
    );
    match cmds.last() {
        Some(Command::WakeAt(t)) => *t,
        other => panic!("no wake-up asked: {other:?}"),
    }
}

/// One round from a rest ending at `now` that ends in `ERROR_STATE`.
fn failing_round(e: &mut Engine, now: Duration) -> Duration {
    assert_eq!(e.step(now, Input::Tick), vec![Command::Observe]);
    fail_until_error(e, now)
}

#[test]
fn each_failed_round_rests_twice_as_long_up_to_the_cap() {
    let (_, mut e) = resting();
    let mut now = OBSERVE;
    let mut rests = Vec::new();
    for _ in 0..5 {
        let at = failing_round(&mut e, now);
        rests.push((at - now).as_secs());
        now = at;
    }
    // Doubling from two periods, at most 2^3 periods (the test policy's cap).
    assert_eq!(rests, vec![60, 120, 240, 240, 240]);
}

#[test]
fn a_new_desired_state_is_tried_at_once_and_resets_the_backoff() {
    let (d, mut e) = resting();
    let mut now = OBSERVE;
    for _ in 0..3 {
        now = failing_round(&mut e, now);
    }
    let mut d2 = d.clone();
    d2.id = 2;
    let t = now - secs(100);
    assert_eq!(
        e.step(t, Input::Submit(Box::new(d2.clone()))),
        vec![
            Command::Append(vec![Event::Accepted(d2)]),
            Command::Verdict(Ok(Submission::Accepted)),
            Command::Observe,
        ]
    );
    // The round started by the submission fails too: the rest starts over at two periods.
    assert_eq!(fail_until_error(&mut e, t), t + OBSERVE * 2);
}

#[test]
fn a_tick_before_the_deadline_does_nothing() {
    let (_, mut e) = resting();
    let before = e.state().clone();
    assert_eq!(e.step(OBSERVE - secs(1), Input::Tick), vec![]);
    assert_eq!(e.state(), &before);
}
