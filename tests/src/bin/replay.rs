//! Replays regression case files and prints what failed: `cargo run -p integration-tests
//! --bin replay -- tests/regressions/foo.json ...`.

fn main() -> std::process::ExitCode {
    let mut failed = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `replay --generated SEED [faults] [leaders]`: run the generated case of a seed (as the
    // generative test and the throughput bench build it), and save it if it fails.
    if args.first().map(String::as_str) == Some("--generated") {
        let seed: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let rest = args.get(2..).unwrap_or(&[]);
        let faults = rest.iter().any(|s| s == "faults");
        let leaders = rest.iter().any(|s| s == "leaders");
        let case = integration_tests::generator::case_with(seed, faults, leaders);
        return match integration_tests::run_case(&case) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                let path = format!("seed-{seed}.json");
                let _ = std::fs::write(
                    &path,
                    serde_json::to_string_pretty(&case).unwrap_or_default(),
                );
                println!("FAIL seed {seed} (saved to {path}): {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    for path in args {
        let case: integration_tests::Case = match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{path}: {e}");
                failed = true;
                continue;
            }
        };
        match integration_tests::run_case(&case) {
            Ok(()) => println!("ok    {path} ({})", case.name),
            Err(e) => {
                failed = true;
                println!("FAIL  {path} ({}): {e}", case.name);
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
