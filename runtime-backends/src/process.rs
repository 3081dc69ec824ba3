//! How a VM's RonDB program becomes a process, and how that process is ended: as a child of
//! the agent ([`ChildProcesses`], the `direct` runtime) or as a program of supervisord
//! ([`crate::supervisord::Supervisord`], the `supervisord` runtime, as on the seed's
//! containers). Everything RonDB-specific (installation, config files, readiness, stopping
//! data nodes through the management server) is shared and lives in [`crate::direct`]; only
//! this part differs.

use agent_core::backend::BackendError;
use async_trait::async_trait;
use std::path::Path;
use std::time::{Duration, Instant};
use tracing::warn;

/// A program to start: RonDB's own command line, its working directory and its log.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub command: &'a [String],
    pub dir: &'a Path,
    pub log: &'a Path,
}

/// Starts and ends the one program of a VM.
#[async_trait]
pub trait ProcessControl: Send + Sync {
    /// Starts the program; returns its pid (the pid of RonDB's process, so the agent can
    /// watch it whoever started it).
    async fn start(&self, launch: &Launch<'_>) -> Result<u32, BackendError>;

    /// Ends the program started as `pid`. `ask` is false when RonDB has been told to stop
    /// already (a data node stopped through the management server exits by itself): it is
    /// given time to do so before anything is sent.
    async fn stop(&self, pid: u32, ask: bool);
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Sends `sig` to the process group `pid` leads (RonDB's angel and its data node both).
pub fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// Waits up to `patience` for `pid` to exit; true when it did.
pub async fn wait_exit(pid: u32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !alive(pid)
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> BackendError {
    BackendError::refused(crate::io_message(what, &e)).caused_by(e)
}

/// Programs run as the agent's own children, each in a process group of its own (so a
/// signal reaches RonDB's angel and the data node it forks), output appended to its log.
/// An agent that restarts finds them again by the pid it recorded.
#[derive(Debug, Clone, Default)]
pub struct ChildProcesses;

#[async_trait]
impl ProcessControl for ChildProcesses {
    async fn start(&self, launch: &Launch<'_>) -> Result<u32, BackendError> {
        use std::os::unix::process::CommandExt;
        let exe = launch
            .command
            .first()
            .ok_or_else(|| BackendError::refused("empty command line"))?;
        if let Some(d) = launch.log.parent() {
            std::fs::create_dir_all(d).map_err(|e| io(d.display(), e))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(launch.log)
            .map_err(|e| io(launch.log.display(), e))?;
        let log2 = log.try_clone().map_err(|e| io(launch.log.display(), e))?;
        let mut child = std::process::Command::new(exe)
            .args(&launch.command[1..])
            .current_dir(launch.dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| io(format!("starting {exe}"), e))?;
        let pid = child.id();
        // Reaped while this agent lives; after an agent restart it is adopted by pid.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(pid)
    }

    /// RonDB's programs stop cleanly on SIGTERM; one that does not within 30 s is asked
    /// again, then killed.
    async fn stop(&self, pid: u32, ask: bool) {
        use nix::sys::signal::Signal;
        if ask {
            signal_group(pid, Signal::SIGTERM);
        }
        if wait_exit(pid, Duration::from_secs(30)).await {
            return;
        }
        signal_group(pid, Signal::SIGTERM);
        if wait_exit(pid, Duration::from_secs(10)).await {
            return;
        }
        warn!(pid, "did not stop; killing it");
        signal_group(pid, Signal::SIGKILL);
        wait_exit(pid, Duration::from_secs(5)).await;
    }
}
