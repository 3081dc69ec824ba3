//! Generative throughput on one core: random desired-state transitions per second, with
//! every safety rule checked after every event. Goal: >= 1,000/s.
//! `cargo bench -p integration-tests --bench generative_throughput` (BENCH_CASES=N).

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use integration_tests::generator::{case_for, STEPS_PER_CASE};
use integration_tests::run_case;
use std::time::Instant;

fn main() {
    let cases: u64 = std::env::var("BENCH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for faults in [false, true] {
        let start = Instant::now();
        let mut failed = 0;
        for seed in 0..cases {
            if run_case(&case_for(seed * 7919 + 13, faults)).is_err() {
                failed += 1;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let transitions = cases as f64 * STEPS_PER_CASE as f64;
        println!(
            "generative throughput ({}): {transitions} transitions in {secs:.2} s = {:.0} transitions/s, {failed} failing case(s)",
            if faults { "with faults and VM loss" } else { "no faults" },
            transitions / secs
        );
    }
}
