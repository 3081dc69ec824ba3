//! `ndb_restore`: restores a native backup through an API node. Run once per backup file set
//! (per original data node id, `-n`), metadata (`-m`) once, then `--rebuild-indexes` once,
//! as RonDB's manual and rondb-helm's restore job do. Rows go to the node groups of the
//! cluster restored into, whatever its shape.

use crate::backup::{self, CtlFile, DataFile};
use crate::cli::{self, flag, value, Opt};
use crate::cluster::{ApiNode, ClusterError};
use crate::mgm::ConnectString;
use crate::version::Version;
use std::path::PathBuf;
use std::time::Duration;

const OPTIONS: &[Opt] = &[
    value("ndb-connectstring", Some('c')),
    value("connect-string", None),
    value("ndb-nodeid", None),
    value("nodeid", Some('n')),
    value("backupid", Some('b')),
    value("backup-path", None),
    flag("restore-meta", Some('m')),
    flag("restore-data", Some('r')),
    flag("disable-indexes", Some('D')),
    flag("rebuild-indexes", Some('R')),
    flag("restore-epoch", Some('e')),
    flag("no-restore-disk-objects", Some('d')),
    flag("no-binlog", None),
    value("include-databases", None),
    value("exclude-databases", None),
    value("include-tables", None),
    value("exclude-tables", None),
    value("parallelism", Some('p')),
    value("num-slices", None),
    value("slice-id", None),
    flag("allow-pk-changes", None),
    flag("print", None),
    flag("print-data", None),
    flag("print-meta", None),
    flag("print-log", None),
    flag("skip-table-check", Some('s')),
    flag("promote-attributes", Some('A')),
    value("connect-retries", None),
    value("connect-retry-delay", None),
    flag("version", Some('V')),
];

/// NdbToolsProgramExitCode.
const OK: i32 = 0;
const FAILED: i32 = 1;
const WRONG_ARGS: i32 = 2;

/// Rows per write, like ndb_restore's batches of parallel operations.
const BATCH: usize = 256;

pub async fn main(args: Vec<String>) -> i32 {
    let opts = match cli::parse(&args, OPTIONS) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ndb_restore: {e}");
            return WRONG_ARGS;
        }
    };
    if opts.flag("version") {
        println!(
            "ndb_restore  Ver 8.0.37 for Linux on x86_64 (RonDB-{})",
            Version::current()
        );
        return OK;
    }
    let node: u32 = match opts.number("nodeid") {
        Ok(Some(n)) if n > 0 => n,
        _ => {
            eprintln!("Error in --nodeid,-n setting, see --help");
            return WRONG_ARGS;
        }
    };
    let backup_id: u32 = match opts.number("backupid") {
        Ok(Some(b)) if b > 0 => b,
        _ => {
            eprintln!("Error in --backupid,-b setting, see --help");
            return WRONG_ARGS;
        }
    };
    let path = PathBuf::from(
        opts.value("backup-path")
            .map(str::to_string)
            .or_else(|| opts.positional.first().cloned())
            .unwrap_or_else(|| ".".into()),
    );
    println!("Nodeid = {node}");
    println!("Backup Id = {backup_id}");
    println!("backup path = {}", path.display());
    let ctl_path = path.join(backup::ctl_name(backup_id, node));
    println!("Opening file '{}'", ctl_path.display());
    let ctl: CtlFile = match backup::read_file(&ctl_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("Failed to read backup meta data of backup {backup_id} node {node}");
            return FAILED;
        }
    };
    if ctl.backup_id != backup_id || ctl.node_id != node {
        eprintln!(
            "File '{}' belongs to backup {} of node {}, not backup {backup_id} of node {node}",
            ctl_path.display(),
            ctl.backup_id,
            ctl.node_id
        );
        return FAILED;
    }
    println!(
        "Backup version in files: ndb-6.3.11 ndb version: RonDB-{}",
        ctl.version
    );
    println!("Stop GCP of Backup: {}", ctl.stop_gci);
    let restore_data = opts.flag("restore-data");
    let data: Option<DataFile> = if restore_data {
        let p = path.join(backup::data_name(backup_id, node));
        println!("Opening file '{}'", p.display());
        match backup::read_file(&p) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("{e}");
                return FAILED;
            }
        }
    } else {
        None
    };
    let needs_cluster = opts.flag("restore-meta")
        || restore_data
        || opts.flag("rebuild-indexes")
        || opts.flag("restore-epoch")
        || opts.flag("disable-indexes");
    if !needs_cluster {
        return OK;
    }
    let cs_text = opts
        .value("ndb-connectstring")
        .or(opts.value("connect-string"))
        .unwrap_or("localhost:1186");
    let cs = match ConnectString::parse(cs_text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return WRONG_ARGS;
        }
    };
    let api_id: Option<u32> = opts.number("ndb-nodeid").ok().flatten();
    let api = match connect(&cs, api_id).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Failed to connect to ndb!! ({e})");
            return FAILED;
        }
    };
    println!("Connected to ndb!!");
    if let Err(e) = restore(&opts, &api, &ctl, data.as_ref()).await {
        eprintln!("{e}");
        eprintln!("Restore: Failed to restore data due to a unrecoverable error. Exiting...");
        return FAILED;
    }
    println!("\nNDBT_ProgramExit: 0 - OK\n");
    OK
}

/// ndb_restore is an API node: it needs a free API slot and a cluster that is up.
async fn connect(cs: &ConnectString, id: Option<u32>) -> Result<ApiNode, ClusterError> {
    let mut last = None;
    for _ in 0..30 {
        match ApiNode::connect(cs, id, "ndb_restore").await {
            Ok(api) => {
                api.wait_ready(Duration::from_secs(60)).await?;
                return Ok(api);
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last.unwrap_or(ClusterError::ClusterFailure))
}

fn included(opts: &cli::Parsed, db: &str, table: &str) -> bool {
    let list = |k: &str| -> Option<Vec<String>> {
        opts.value(k)
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
    };
    let full = format!("{db}.{table}");
    if list("include-databases").is_some_and(|l| !l.iter().any(|d| d == db)) {
        return false;
    }
    if list("exclude-databases").is_some_and(|l| l.iter().any(|d| d == db)) {
        return false;
    }
    if list("include-tables").is_some_and(|l| !l.contains(&full)) {
        return false;
    }
    !list("exclude-tables").is_some_and(|l| l.contains(&full))
}

async fn restore(
    opts: &cli::Parsed,
    api: &ApiNode,
    ctl: &CtlFile,
    data: Option<&DataFile>,
) -> Result<(), String> {
    if opts.flag("restore-meta") {
        let existing = api.databases().await.map_err(|e| e.to_string())?;
        for db in &ctl.dictionary.databases {
            if !existing.contains(db) {
                api.create_database(db).await.map_err(|e| e.to_string())?;
            }
        }
        for t in ctl
            .dictionary
            .tables
            .values()
            .filter(|t| included(opts, &t.db, &t.name))
        {
            api.create_table(&t.db, &t.name, &t.key_column, &t.value_column, t.value_len)
                .await
                .map_err(|e| match e {
                    ClusterError::TableExists(_) => format!(
                        "Create table `{}/def/{}` failed: 721: Schema object with given name already exists",
                        t.db, t.name
                    ),
                    other => format!("Create table `{}/def/{}` failed: {other}", t.db, t.name),
                })?;
            println!("Successfully restored table `{}/def/{}`", t.db, t.name);
        }
        if opts.flag("disable-indexes") {
            println!("Disabling indexes");
        }
    }
    if let Some(data) = data {
        let mut restored = 0u64;
        for (full, rows) in &data.tables {
            let Some(def) = ctl.dictionary.tables.get(full) else {
                return Err(format!(
                    "Table {full} of the data file is not in the backup's metadata"
                ));
            };
            if !included(opts, &def.db, &def.name) {
                continue;
            }
            println!("_____________________________________________________");
            println!(
                "Processing data in table: {}/def/{} fragment 0",
                def.db, def.name
            );
            for chunk in rows.chunks(BATCH) {
                api.put(&def.db, &def.name, chunk.to_vec()).await.map_err(|e| match e {
                    ClusterError::NoSuchTable(_) | ClusterError::NoSuchDatabase(_) => format!(
                        "Table {}/def/{} does not exist in the cluster: restore the metadata first (-m)",
                        def.db, def.name
                    ),
                    other => other.to_string(),
                })?;
                restored += chunk.len() as u64;
            }
        }
        println!("_____________________________________________________");
        println!("Restored {restored} tuples and 0 log entries");
    }
    if opts.flag("rebuild-indexes") {
        println!("Rebuilding indexes");
    }
    if opts.flag("restore-epoch") {
        println!("Restoring epoch: {}", ctl.stop_gci);
    }
    Ok(())
}
