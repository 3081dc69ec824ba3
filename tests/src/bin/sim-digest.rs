//! A digest of every step report of many generative cases (actions in order with their
//! times, outcomes, errors, clusters), with and without faults and leader changes. Two
//! builds that print the same digest made the same decisions in the same order: the check
//! that a speed-up changed no behaviour.
//! `cargo run --release -p integration-tests --bin sim-digest [CASES]`

use integration_tests::generator::case_with;
use integration_tests::run_case_with;
use std::hash::{DefaultHasher, Hasher};

fn main() {
    let cases: u64 = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for (faults, leaders) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut h = DefaultHasher::new();
        let (mut steps, mut actions, mut failed) = (0u64, 0u64, 0u64);
        for seed in 0..cases {
            let case = case_with(seed * 7919 + 13, faults, leaders);
            let r = run_case_with(&case, &mut |i, report| {
                steps += 1;
                actions += report.actions.len() as u64;
                h.write_usize(i);
                h.write(serde_json::to_string(report).unwrap_or_default().as_bytes());
            });
            if let Err(e) = r {
                failed += 1;
                h.write(e.as_bytes());
            }
        }
        println!(
            "faults={faults} leader_changes={leaders}: {steps} steps, {actions} actions, {failed} failing, digest {:016x}",
            h.finish()
        );
    }
}
