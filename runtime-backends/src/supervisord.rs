//! RonDB's program as a program of supervisord, as on the seed's containers (where
//! supervisord also runs the agent): a `[program:rondb]` section in supervisord's include
//! directory, driven with `supervisorctl`.
//!
//! The section never starts or restarts by itself (`autostart=false`,
//! `autorestart=false`): a program that dies is the leader's to see and decide about, and a
//! container that boots again must not start RonDB behind its back (a data node of a
//! replaced VM must never run twice). RonDB's angel process still restarts a data node as
//! RonDB does.

use crate::process::{wait_exit, Launch, ProcessControl};
use agent_core::backend::BackendError;
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// The section's name: one RonDB program per VM.
pub const PROGRAM: &str = "rondb";

/// How long supervisord waits after SIGTERM before SIGKILL (RonDB's programs stop within
/// seconds; a data node's graceful stop goes through the management server first).
const STOP_WAIT_SECS: u64 = 40;

/// supervisord reached through `supervisorctl`.
#[derive(Debug, Clone)]
pub struct Supervisord {
    /// supervisord's include directory (`[include] files = DIR/*.conf`).
    include_dir: PathBuf,
    /// supervisord's configuration file, for `supervisorctl -c`.
    config: PathBuf,
    supervisorctl: PathBuf,
}

/// What went wrong talking to supervisord.
#[derive(Debug, thiserror::Error)]
pub enum SupervisordError {
    #[error("cannot run {program}: {source}; is supervisord installed (Debian's `supervisor`)?")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`supervisorctl {args}` did not answer within {secs} s; is supervisord running?")]
    Timeout { args: String, secs: u64 },
    #[error("`supervisorctl {args}` failed: {output}")]
    Failed { args: String, output: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

impl From<SupervisordError> for BackendError {
    fn from(e: SupervisordError) -> Self {
        match e {
            SupervisordError::Timeout { .. } => BackendError::transient(e.to_string()).caused_by(e),
            _ => BackendError::refused(e.to_string()).caused_by(e),
        }
    }
}

/// An argument as supervisord's command line reads it: split like a shell (shlex), and
/// `%` starts an expansion in its configuration files.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@+".contains(c));
    let quoted = if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r#"'"'"'"#))
    };
    quoted.replace('%', "%%")
}

/// The `[program:rondb]` section for a launch.
pub fn program_section(launch: &Launch<'_>) -> String {
    let command: Vec<String> = launch.command.iter().map(|a| quote(a)).collect();
    format!(
        "; Written by ndb-agent: the RonDB program of this VM. Started and stopped by the agent.\n\
         [program:{PROGRAM}]\n\
         command={}\n\
         directory={}\n\
         autostart=false\n\
         autorestart=false\n\
         startsecs=0\n\
         stopsignal=TERM\n\
         stopwaitsecs={STOP_WAIT_SECS}\n\
         stopasgroup=true\n\
         killasgroup=true\n\
         redirect_stderr=true\n\
         stdout_logfile={}\n\
         stdout_logfile_maxbytes=0\n",
        command.join(" "),
        quote(&launch.dir.display().to_string()),
        quote(&launch.log.display().to_string()),
    )
}

impl Supervisord {
    /// `config` is supervisord's configuration file; it must include `include_dir/*.conf`.
    pub fn new(include_dir: &Path, config: &Path) -> Self {
        Supervisord {
            include_dir: include_dir.to_path_buf(),
            config: config.to_path_buf(),
            supervisorctl: PathBuf::from("supervisorctl"),
        }
    }

    async fn ctl(&self, args: &[&str]) -> Result<String, SupervisordError> {
        let joined = args.join(" ");
        let secs = STOP_WAIT_SECS + 20;
        let out = tokio::time::timeout(
            Duration::from_secs(secs),
            tokio::process::Command::new(&self.supervisorctl)
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output(),
        )
        .await
        .map_err(|_| SupervisordError::Timeout {
            args: joined.clone(),
            secs,
        })?
        .map_err(|source| SupervisordError::Spawn {
            program: self.supervisorctl.display().to_string(),
            source,
        })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_string();
        // supervisorctl answers errors in its output (exit codes vary by version).
        if !out.status.success() || text.contains("ERROR") || text.contains("refused connection") {
            return Err(SupervisordError::Failed {
                args: joined,
                output: text,
            });
        }
        Ok(text)
    }

    fn section_path(&self) -> PathBuf {
        self.include_dir.join(format!("{PROGRAM}.conf"))
    }
}

#[async_trait]
impl ProcessControl for Supervisord {
    async fn start(&self, launch: &Launch<'_>) -> Result<u32, BackendError> {
        if let Some(d) = launch.log.parent() {
            std::fs::create_dir_all(d).map_err(|source| SupervisordError::Write {
                path: d.display().to_string(),
                source,
            })?;
        }
        std::fs::create_dir_all(&self.include_dir).map_err(|source| SupervisordError::Write {
            path: self.include_dir.display().to_string(),
            source,
        })?;
        let path = self.section_path();
        crate::direct::write_atomic(&path, program_section(launch).as_bytes()).map_err(
            |source| SupervisordError::Write {
                path: path.display().to_string(),
                source,
            },
        )?;
        // reread + update: supervisord takes the new section (a new version's command line)
        // and drops a stopped program of the old one; nothing starts yet.
        self.ctl(&["reread"]).await?;
        self.ctl(&["update", PROGRAM]).await?;
        let started = self.ctl(&["start", PROGRAM]).await?;
        info!(program = PROGRAM, answer = %started, "started through supervisord");
        let pid_text = self.ctl(&["pid", PROGRAM]).await?;
        match pid_text.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(pid),
            _ => Err(SupervisordError::Failed {
                args: format!("pid {PROGRAM}"),
                output: format!("no pid after start: {pid_text}"),
            }
            .into()),
        }
    }

    async fn stop(&self, pid: u32, ask: bool) {
        if !ask && wait_exit(pid, Duration::from_secs(30)).await {
            return;
        }
        // SIGTERM to the group, SIGKILL after stopwaitsecs: supervisord's own escalation.
        if let Err(e) = self.ctl(&["stop", PROGRAM]).await {
            // "not running" is an answer too: it exited already.
            if crate::process::alive(pid) {
                warn!(error = %e, pid, "supervisord did not stop RonDB's program; killing it");
                crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        wait_exit(pid, Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_section_carries_the_command_line_as_supervisord_splits_it() {
        let command: Vec<String> = [
            "/srv/rondb/versions/22.10.1/bin/ndbmtd",
            "--ndb-connectstring=10.0.0.2:1186",
            "--nodaemon",
            "it's 100%",
        ]
        .map(String::from)
        .to_vec();
        let s = program_section(&Launch {
            command: &command,
            dir: Path::new("/srv/rondb"),
            log: Path::new("/srv/rondb/logs/ndbmtd.log"),
        });
        assert!(s.contains(
            "command=/srv/rondb/versions/22.10.1/bin/ndbmtd --ndb-connectstring=10.0.0.2:1186 --nodaemon 'it'\"'\"'s 100%%'\n"
        ));
        assert!(s.contains("[program:rondb]\n"));
        // Never started or restarted behind the leader's back.
        assert!(s.contains("autostart=false\n"));
        assert!(s.contains("autorestart=false\n"));
        assert!(s.contains("stdout_logfile=/srv/rondb/logs/ndbmtd.log\n"));
    }
}
