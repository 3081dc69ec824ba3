//! Replays regression case files and prints what failed: `cargo run -p integration-tests
//! --bin replay -- tests/regressions/foo.json ...`.

fn main() -> std::process::ExitCode {
    let mut failed = false;
    for path in std::env::args().skip(1) {
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
