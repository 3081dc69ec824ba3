//! Generative tests: random sequences of valid desired states from random starting points,
//! with and without transient faults and VM loss. After every event the safety rules hold;
//! after every desired state the outcome is `AT_DESIRED_STATE` and the cluster matches it.
//!
//! CI runs 4,000 transitions (at least 2,000 are required); `GENERATIVE_TRANSITIONS=N` raises it. A failing case
//! is written to `tests/regressions/new/` (move it to `tests/regressions/` to keep it).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use integration_tests::generator::{case_for, STEPS_PER_CASE};
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

fn check(seed: u64, faults: bool) -> Result<(), TestCaseError> {
    let case = case_for(seed, faults);
    if let Err(e) = run_case(&case) {
        let path = save(&case);
        return Err(TestCaseError::fail(format!(
            "seed {seed}: {e}\ncase saved to {path}"
        )));
    }
    Ok(())
}

fn run(faults: bool) {
    let cases = (transitions() / 2).div_ceil(STEPS_PER_CASE) as u32;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&any::<u64>(), |seed| check(seed, faults)) {
        panic!("{e}");
    }
}

#[test]
fn random_transitions_without_faults_reach_every_desired_state() {
    run(false);
}

#[test]
fn random_transitions_with_faults_and_vm_loss_reach_every_desired_state() {
    run(true);
}
