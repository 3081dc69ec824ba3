//! Real RonDB command lines. The dummy runtime records them; the direct and supervisord
//! runtimes exec them unchanged against a RonDB tarball. `home` is where RonDB lives on the
//! VM ([`crate::model::Vm::home`]).

/// Where a RonDB version is unpacked on a VM.
pub fn install_dir(home: &str, version: &str) -> String {
    format!("{home}/versions/{version}")
}

fn bin(home: &str, version: &str, program: &str) -> String {
    format!("{}/bin/{program}", install_dir(home, version))
}

pub fn ndb_mgmd(home: &str, version: &str, node_id: u32, initial: bool) -> Vec<String> {
    vec![
        bin(home, version, "ndb_mgmd"),
        format!("--ndb-nodeid={node_id}"),
        "-f".into(),
        format!("{home}/mgmd/config.ini"),
        format!("--configdir={home}/mgmd"),
        if initial { "--initial" } else { "--reload" }.into(),
        "--nodaemon".into(),
    ]
}

pub fn ndbmtd(home: &str, version: &str, connect: &str, node_id: u32, initial: bool) -> Vec<String> {
    let mut c = vec![
        bin(home, version, "ndbmtd"),
        format!("--ndb-connectstring={connect}"),
        format!("--ndb-nodeid={node_id}"),
    ];
    if initial {
        c.push("--initial".into());
    }
    c.push("--nodaemon".into());
    c
}

pub fn mysqld(home: &str, version: &str) -> Vec<String> {
    vec![
        bin(home, version, "mysqld"),
        format!("--defaults-file={home}/my.cnf"),
        format!("--basedir={}", install_dir(home, version)),
    ]
}

/// API hosts run RonDB's REST API server (`rdrs2`) on their slots, configured by
/// `rdrs2.json` ([`crate::model::render_rdrs_config`]); the user's own application reads the
/// same slots from `ndb_api.cnf`.
pub fn api(home: &str, version: &str) -> Vec<String> {
    vec![
        bin(home, version, "rdrs2"),
        "-config".into(),
        format!("{home}/rdrs2.json"),
    ]
}

/// One `ndb_restore` step.
pub fn ndb_restore(
    home: &str,
    version: &str,
    connect: &str,
    api_node_id: u32,
    backup_id: u64,
    backup_dir: &str,
    step: crate::actions::RestoreStep,
    original_node: Option<u32>,
) -> Vec<String> {
    use crate::actions::RestoreStep;
    let mut c = vec![
        bin(home, version, "ndb_restore"),
        format!("--ndb-connectstring={connect}"),
        format!("--ndb-nodeid={api_node_id}"),
        format!("--backupid={backup_id}"),
        format!("--backup-path={backup_dir}/BACKUP/BACKUP-{backup_id}"),
    ];
    match step {
        RestoreStep::Meta => {
            c.push("--restore-meta".into());
            c.push("--disable-indexes".into());
        }
        RestoreStep::Data => {
            c.push("--restore-data".into());
            c.push(format!("--nodeid={}", original_node.unwrap_or(0)));
        }
        RestoreStep::RebuildIndexes => c.push("--rebuild-indexes".into()),
    }
    c
}
