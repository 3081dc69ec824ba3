//! Generative tests: random sequences of valid desired states from random starting points,
//! with and without transient faults, VM loss and VMs that stop (down, started again), with one leader or a leader that moves. After every event the safety rules hold;
//! after every desired state the outcome is `AT_DESIRED_STATE` and the cluster matches it.
//!
//! CI runs 4,000 transitions per test (at least 2,000 are required); `GENERATIVE_TRANSITIONS=N` raises it. A failing case
//! is written to `tests/regressions/new/` (move it to `tests/regressions/` to keep it).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use integration_tests::generator::{case_with, STEPS_PER_CASE};
use integration_tests::{run_case, Case};
use proptest::prelude::*;

fn transitions() -> usize {
    std::env::var("GENERATIVE_TRANSITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000)
}

fn save(case: &Case) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/new");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("seed-{}.json", case.seed));
    let _ = std::fs::write(
        &path,
        serde_json::to_string_pretty(case).unwrap_or_default(),
    );
    path.display().to_string()
}

fn check(seed: u64, faults: bool, leaders: bool) -> Result<(), TestCaseError> {
    let case = case_with(seed, faults, leaders);
    if let Err(e) = run_case(&case) {
        let path = save(&case);
        return Err(TestCaseError::fail(format!(
            "seed {seed}: {e}\ncase saved to {path}"
        )));
    }
    Ok(())
}

fn run(faults: bool, leaders: bool) {
    let cases = (transitions() / 2).div_ceil(STEPS_PER_CASE) as u32;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&any::<u64>(), |seed| check(seed, faults, leaders)) {
        panic!("{e}");
    }
}

#[test]
fn random_transitions_without_faults_reach_every_desired_state() {
    run(false, false);
}

#[test]
fn random_transitions_with_faults_and_vm_loss_reach_every_desired_state() {
    run(true, false);
}

/// The leader moves at random: cut between any two writes of the log, handed over before
/// its own VM goes, lost with its VM; the next leader observes and resumes what was in flight.
#[test]
fn random_transitions_with_leader_changes_reach_every_desired_state() {
    run(false, true);
}

#[test]
fn random_transitions_with_leader_changes_and_faults_reach_every_desired_state() {
    run(true, true);
}
