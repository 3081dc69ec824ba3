//! `ndb-agent`: the one binary of managed RonDB. It wires the backends chosen by flags to the
//! reconciler in `agent-core`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ndb-agent",
    version,
    about = "Managed RonDB agent: validates desired states and reconciles RonDB clusters towards them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a desired-state file (JSONC) against every rule, and optionally the transition
    /// from the previously accepted one. Exit 0 when valid, 2 with every error when not.
    Validate {
        /// The desired-state file to check.
        file: PathBuf,
        /// The last accepted desired state; enables the transition rules (stale Id,
        /// immutable fields, clocks that never decrease, ...).
        #[arg(long)]
        previous: Option<PathBuf>,
        /// Treat the cluster as one where RonDB has already run (restore no longer allowed).
        #[arg(long)]
        rondb_has_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate {
            file,
            previous,
            rondb_has_run,
        } => validate(&file, previous.as_deref(), rondb_has_run),
    }
}

fn validate(
    file: &std::path::Path,
    previous: Option<&std::path::Path>,
    rondb_has_run: bool,
) -> anyhow::Result<ExitCode> {
    use agent_core::desired::{self, TransitionContext};
    let load =
        |p: &std::path::Path| -> anyhow::Result<Result<agent_core::DesiredState, Vec<String>>> {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            Ok(desired::parse(&bytes).map_err(|e| e.problems()))
        };
    let mut errors = Vec::new();
    let new = match load(file)? {
        Ok(d) => Some(d),
        Err(p) => {
            errors.extend(p.into_iter().map(|e| format!("{}: {e}", file.display())));
            None
        }
    };
    let old = match previous {
        Some(p) => match load(p)? {
            Ok(d) => Some(d),
            Err(errs) => {
                errors.extend(
                    errs.into_iter()
                        .map(|e| format!("{} (--previous): {e}", p.display())),
                );
                None
            }
        },
        None => None,
    };
    if let Some(new) = &new {
        let mut v = desired::validate(new);
        match (&old, previous) {
            (Some(old), _) => v.extend(desired::validate_transition(
                old,
                new,
                TransitionContext { rondb_has_run },
            )),
            (None, None) => v.extend(desired::validate_first(new)),
            (None, Some(_)) => {}
        }
        errors.extend(v.into_iter().map(|e| format!("{}: {e}", file.display())));
    }
    match new {
        Some(d) if errors.is_empty() => {
            println!("valid: {}", d.summary());
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("invalid: {} problem(s)", errors.len());
            for e in errors {
                eprintln!("  {e}");
            }
            Ok(ExitCode::from(2))
        }
    }
}
