//! Real RonDB command lines. The dummy runtime records them; the direct and supervisord
//! runtimes exec them unchanged against a RonDB tarball.

use crate::model::RONDB_HOME;

/// Where a RonDB version is unpacked on a VM.
pub fn install_dir(version: &str) -> String {
    format!("{RONDB_HOME}/versions/{version}")
}

fn bin(version: &str, program: &str) -> String {
    format!("{}/bin/{program}", install_dir(version))
}

pub fn ndb_mgmd(version: &str, node_id: u32, initial: bool) -> Vec<String> {
    vec![
        bin(version, "ndb_mgmd"),
        format!("--ndb-nodeid={node_id}"),
        "-f".into(),
        format!("{RONDB_HOME}/mgmd/config.ini"),
        format!("--configdir={RONDB_HOME}/mgmd"),
        if initial { "--initial" } else { "--reload" }.into(),
        "--nodaemon".into(),
    ]
}

pub fn ndbmtd(version: &str, connect: &str, node_id: u32, initial: bool) -> Vec<String> {
    let mut c = vec![
        bin(version, "ndbmtd"),
        format!("--ndb-connectstring={connect}"),
        format!("--ndb-nodeid={node_id}"),
    ];
    if initial {
        c.push("--initial".into());
    }
    c.push("--nodaemon".into());
    c
}

pub fn mysqld(version: &str) -> Vec<String> {
    vec![
        bin(version, "mysqld"),
        format!("--defaults-file={RONDB_HOME}/my.cnf"),
        format!("--basedir={}", install_dir(version)),
    ]
}

/// API hosts run the application the user deploys; the agent starts RonDB's own API
/// process wrapper with the node ids and connect string of `ndb_api.cnf`.
pub fn api(version: &str, connect: &str, node_ids: &[u32]) -> Vec<String> {
    vec![
        bin(version, "ndb_api_host"),
        format!("--ndb-connectstring={connect}"),
        format!(
            "--ndb-nodeids={}",
            node_ids
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    ]
}

/// One `ndb_restore` step.
pub fn ndb_restore(
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
        bin(version, "ndb_restore"),
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
