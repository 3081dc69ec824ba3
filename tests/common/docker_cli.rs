//! The docker CLI for the Docker suites' setup and checks (what bollard does not make
//! shorter: inspect templates, network connect/disconnect).

#![allow(dead_code)]

/// Runs `docker ARGS`: its trimmed output, or a panic naming the command and Docker's error.
pub fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
