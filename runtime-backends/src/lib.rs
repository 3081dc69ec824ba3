//! `ProcessRuntime` implementations: `dummy` changes the simulated world (`sim-world`) as a
//! real run would; `dummy_vm` is the dummy of one real agent (files written, programs pretended).
//! `direct` runs RonDB's programs for real: installed from their tarballs, configured,
//! started with RonDB's command lines, watched through RonDB's own protocols. How a program
//! becomes a process is [`process::ProcessControl`]: a child of the agent
//! ([`process::ChildProcesses`], the `direct` runtime) or a program of supervisord
//! ([`supervisord::Supervisord`], the `supervisord` runtime).

pub mod direct;
pub mod dummy;
pub mod dummy_vm;
pub mod mgm;
pub mod process;
pub mod supervisord;

pub use direct::DirectRuntime;

/// The words for a failed file operation of a runtime. A full disk is named as such, with
/// what to do: the agents retry, but only freeing space on that VM lets the action through,
/// and "os error 28" alone does not tell a person that.
pub(crate) fn io_message(what: impl std::fmt::Display, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!("{what}: the VM's disk is full ({e}); free space on it")
    } else {
        format!("{what}: {e}")
    }
}
pub use dummy::DummyRuntime;
pub use dummy_vm::VmDummyRuntime;

#[cfg(test)]
mod tests {
    use super::io_message;

    #[test]
    fn a_full_disk_is_named_with_what_to_do() {
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        let m = io_message("config.ini", &full);
        assert!(
            m.starts_with("config.ini: the VM's disk is full") && m.contains("free space"),
            "{m}"
        );
        let denied = std::io::Error::from_raw_os_error(13); // EACCES
        assert_eq!(
            io_message("config.ini", &denied),
            format!("config.ini: {denied}")
        );
    }
}
