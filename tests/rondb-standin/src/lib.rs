//! A stand-in for RonDB's programs at the process and protocol level. One multi-call binary
//! acts as `ndb_mgmd`, `ndbmtd`, `mysqld`, `ndb_mgm`, `ndb_restore`, `ndb_waiter` and `rdrs2`
//! by the name it is called as, with RonDB's command lines, config files, mgm protocol,
//! output, exit codes and failure rules, so that the agent code that drives it drives a real
//! RonDB tarball unchanged. It is a test oracle, not a database: fidelity over features.

pub mod cluster;
pub mod config;
pub mod logging;
pub mod mgm;
pub mod transporter;
pub mod version;

pub mod mgmd;
pub mod ndbmtd;
pub mod store;

pub mod mysqld;
pub mod rdrs;
pub mod sql;

pub mod ndb_mgm;
pub mod ndb_waiter;

pub mod backup;
pub mod ndb_restore;

pub mod cli;

/// The programs this binary can be, by the name it is called as.
pub const PROGRAMS: &[&str] = &[
    "ndb_mgmd",
    "ndbmtd",
    "ndbd",
    "mysqld",
    "ndb_mgm",
    "ndb_restore",
    "ndb_waiter",
    "rdrs2",
];

/// Runs `program` with its arguments (without the program name); returns the exit code.
pub fn run(program: &str, args: Vec<String>) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        match program {
            "ndb_mgmd" => mgmd::main(args).await,
            "ndbmtd" | "ndbd" => ndbmtd::main(args).await,
            "mysqld" => mysqld::main(args).await,
            "ndb_mgm" => ndb_mgm::main(args).await,
            "ndb_restore" => ndb_restore::main(args).await,
            "ndb_waiter" => ndb_waiter::main(args).await,
            "rdrs2" => rdrs::main(args).await,
            other => {
                eprintln!(
                    "rondb-standin: unknown program '{other}'; call it as one of: {}",
                    PROGRAMS.join(", ")
                );
                2
            }
        }
    })
}

/// RonDB's servers daemonize unless told `--nodaemon` (or `--foreground`): the program
/// starts itself again detached, in its own session, and the parent exits 0.
pub fn daemonize(program: &str, args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("{program}: cannot find my own executable to daemonize");
        return 1;
    };
    let mut cmd = std::process::Command::new(&exe);
    if exe.file_name().is_some_and(|n| n == "rondb-standin") {
        cmd.arg(program);
    } else {
        cmd.arg0(program);
    }
    cmd.args(args.iter().filter(|a| *a != "-d" && *a != "--daemon"))
        .arg("--nodaemon")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    match cmd.spawn() {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("{program}: cannot daemonize: {e}");
            1
        }
    }
}
