//! Native backup files as RonDB lays them out: on every data node
//! `<BackupDataDir>/BACKUP/BACKUP-<id>/BACKUP-<id>.<node>.ctl` (the dictionary),
//! `BACKUP-<id>-0.<node>.Data` (this node's share of its node group's rows) and
//! `BACKUP-<id>.<node>.log`. Each file starts with RonDB's `NDBBCKUP` magic and ends with a
//! checksum, so `ndb_restore` can tell a damaged file from a good one.

use crate::transporter::{mix, Dictionary, Row};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAGIC: &str = "NDBBCKUP";

#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    #[error("file already exists: {0}")]
    Exists(PathBuf),
    #[error("Failed to open file '{path}': {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("File '{path}' is not a backup file or is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtlFile {
    pub backup_id: u32,
    pub node_id: u32,
    pub version: String,
    pub stop_gci: u64,
    pub dictionary: Dictionary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataFile {
    pub backup_id: u32,
    pub node_id: u32,
    /// By `db.table`.
    pub tables: BTreeMap<String, Vec<Row>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogFile {
    pub backup_id: u32,
    pub node_id: u32,
    pub entries: Vec<Row>,
}

pub fn backup_dir(backup_data_dir: &Path, id: u32) -> PathBuf {
    backup_data_dir.join("BACKUP").join(format!("BACKUP-{id}"))
}

pub fn ctl_name(id: u32, node: u32) -> String {
    format!("BACKUP-{id}.{node}.ctl")
}

pub fn data_name(id: u32, node: u32) -> String {
    format!("BACKUP-{id}-0.{node}.Data")
}

pub fn log_name(id: u32, node: u32) -> String {
    format!("BACKUP-{id}.{node}.log")
}

/// Which of a node group's started nodes writes a row: the group's rows are shared among
/// them, as RonDB's fragment primaries share a backup.
pub fn writer_of(key: i64, writers: usize) -> usize {
    (mix(key as u64 ^ 0x5bd1_e995) % writers.max(1) as u64) as usize
}

fn checksum(body: &str) -> u64 {
    // FNV-1a: enough to notice a truncated or edited file.
    body.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn write_file<T: Serialize>(path: &Path, value: &T) -> Result<u64, BackupFileError> {
    let io = |source| BackupFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let body = serde_json::to_string(value).map_err(|e| io(std::io::Error::other(e)))?;
    let text = format!("{MAGIC}\n{body}\nchecksum {:016x}\n", checksum(&body));
    crate::mgmd::write_atomic(path, text.as_bytes()).map_err(io)?;
    Ok(text.len() as u64)
}

pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, BackupFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| BackupFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: &str| BackupFileError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(corrupt("no NDBBCKUP header"));
    }
    let body = lines.next().ok_or_else(|| corrupt("truncated"))?;
    let sum = lines
        .next()
        .and_then(|l| l.strip_prefix("checksum "))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| corrupt("no checksum (truncated?)"))?;
    if sum != checksum(body) {
        return Err(corrupt("checksum mismatch"));
    }
    serde_json::from_str(body).map_err(|e| corrupt(&e.to_string()))
}

/// Writes one data node's three files; returns (records, bytes).
pub fn write_node_backup(
    backup_data_dir: &Path,
    ctl: &CtlFile,
    data: &DataFile,
) -> Result<(u64, u64), BackupFileError> {
    let dir = backup_dir(backup_data_dir, ctl.backup_id);
    let ctl_path = dir.join(ctl_name(ctl.backup_id, ctl.node_id));
    if ctl_path.exists() {
        return Err(BackupFileError::Exists(ctl_path));
    }
    std::fs::create_dir_all(&dir).map_err(|source| BackupFileError::Io {
        path: dir.clone(),
        source,
    })?;
    let records = data.tables.values().map(|r| r.len() as u64).sum();
    let mut bytes = write_file(&dir.join(data_name(ctl.backup_id, ctl.node_id)), data)?;
    bytes += write_file(
        &dir.join(log_name(ctl.backup_id, ctl.node_id)),
        &LogFile {
            backup_id: ctl.backup_id,
            node_id: ctl.node_id,
            entries: Vec::new(),
        },
    )?;
    // The control file last: a backup whose .ctl exists is complete.
    bytes += write_file(&ctl_path, ctl)?;
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_notices_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let ctl = CtlFile {
            backup_id: 5,
            node_id: 2,
            version: "24.10.1".into(),
            stop_gci: 7,
            dictionary: Dictionary::default(),
        };
        let data = DataFile {
            backup_id: 5,
            node_id: 2,
            tables: [("d.t".to_string(), vec![(1, Some("a".into()))])].into(),
        };
        let (records, _) = write_node_backup(tmp.path(), &ctl, &data).unwrap();
        assert_eq!(records, 1);
        let dir = backup_dir(tmp.path(), 5);
        assert!(dir.join("BACKUP-5-0.2.Data").exists());
        assert!(dir.join("BACKUP-5.2.log").exists());
        let back: DataFile = read_file(&dir.join("BACKUP-5-0.2.Data")).unwrap();
        assert_eq!(back.tables["d.t"], vec![(1, Some("a".into()))]);
        assert!(matches!(
            write_node_backup(tmp.path(), &ctl, &data),
            Err(BackupFileError::Exists(_))
        ));
        let p = dir.join("BACKUP-5-0.2.Data");
        let damaged = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"a\"", "\"b\"");
        std::fs::write(&p, damaged).unwrap();
        assert!(matches!(
            read_file::<DataFile>(&p),
            Err(BackupFileError::Corrupt { .. })
        ));
    }
}
