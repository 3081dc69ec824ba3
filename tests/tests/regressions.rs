//! Replays every case of the regression corpus (`tests/regressions/*.json`): hand-written
//! hard cases and failures the generative tests found. New bugs become new files.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a panic is the failure report

use integration_tests::{run_case, Case};

#[test]
fn every_regression_case_still_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "the corpus lost cases: only {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let case: Case = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a case: {e}", f.display()));
        if let Err(e) = run_case(&case) {
            failures.push(format!("{} ({}): {e}", f.display(), case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
