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

/// The cluster CA of the bootstrap agent in `container` (its DATA_DIR/tls/ca.pem, made on its
/// first start), waited for up to a minute: the agents in containers serve their API over
/// HTTPS, checked against it.
pub fn bootstrap_ca(container: &str) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let out = std::process::Command::new("docker")
            .args(["exec", container, "cat", "/var/lib/ndb-agent/tls/ca.pem"])
            .output()
            .expect("run docker");
        let pem = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && pem.contains("END CERTIFICATE") {
            return pem;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{container} made no cluster CA in a minute: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
