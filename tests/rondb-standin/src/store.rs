//! A data node's file system (`<FileSystemPath>/ndb_<id>_fs`): the system file RonDB checks
//! before a non-initial start, the dictionary and this node group's rows. Every change is
//! written to disk (fsync) before the write is acknowledged.

use crate::transporter::{Dictionary, RowOp, TableDef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RonDB refuses a non-initial start without a file system (no `P0.sysfile`).
    #[error("Invalid file system: no system file {0} (start the node with --initial to create its file system)")]
    NoFileSystem(PathBuf),
    #[error("file system {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("file system {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub type Rows = BTreeMap<String, BTreeMap<i64, Option<String>>>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeData {
    pub dictionary: Dictionary,
    /// By `db.table`: this node group's rows only.
    pub rows: Rows,
    /// Writes applied; the newest files of a node group have the highest.
    pub lsn: u64,
}

pub struct Store {
    dir: PathBuf,
    pub data: NodeData,
}

impl Store {
    fn sysfile(dir: &Path) -> PathBuf {
        dir.join("D1").join("DBDIH").join("P0.sysfile")
    }

    fn data_file(dir: &Path) -> PathBuf {
        dir.join("D1").join("DBLQH").join("rows.json")
    }

    /// `initial`: wipe and create the file system (RonDB's `--initial`).
    pub fn open(dir: &Path, initial: bool) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if initial {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(io)?;
            }
            let sys = Self::sysfile(dir);
            if let Some(p) = sys.parent() {
                std::fs::create_dir_all(p).map_err(io)?;
            }
            crate::mgmd::write_atomic(&sys, b"NDBSYSFILE\n").map_err(io)?;
            let s = Store {
                dir: dir.to_path_buf(),
                data: NodeData::default(),
            };
            s.save()?;
            return Ok(s);
        }
        if !Self::sysfile(dir).exists() {
            return Err(StoreError::NoFileSystem(Self::sysfile(dir)));
        }
        let path = Self::data_file(dir);
        let data = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => NodeData::default(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            data,
        })
    }

    pub fn save(&self) -> Result<(), StoreError> {
        let path = Self::data_file(&self.dir);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(io)?;
        }
        let bytes = serde_json::to_vec(&self.data).map_err(|e| io(std::io::Error::other(e)))?;
        crate::mgmd::write_atomic(&path, &bytes).map_err(io)
    }

    pub fn create_database(&mut self, name: &str) -> Result<(), StoreError> {
        self.data.dictionary.databases.insert(name.to_string());
        self.data.lsn += 1;
        self.save()
    }

    pub fn create_table(&mut self, def: TableDef) -> Result<(), StoreError> {
        self.data.dictionary.databases.insert(def.db.clone());
        self.data.rows.entry(def.full_name()).or_default();
        self.data.dictionary.tables.insert(def.full_name(), def);
        self.data.lsn += 1;
        self.save()
    }

    /// Applies a write in memory (the caller saves); returns rows affected.
    pub fn apply(&mut self, table: &str, ops: &[RowOp]) -> u64 {
        let rows = self.data.rows.entry(table.to_string()).or_default();
        let mut n = 0;
        for op in ops {
            match op {
                RowOp::Put(k, v) => {
                    rows.insert(*k, v.clone());
                    n += 1;
                }
                RowOp::Delete(k) => n += u64::from(rows.remove(k).is_some()),
            }
        }
        self.data.lsn += 1;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_rows_across_opens_and_refuses_a_missing_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ndb_1_fs");
        assert!(matches!(
            Store::open(&dir, false),
            Err(StoreError::NoFileSystem(_))
        ));
        let mut s = Store::open(&dir, true).unwrap();
        s.apply(
            "d.t",
            &[
                RowOp::Put(1, Some("a".into())),
                RowOp::Put(2, None),
                RowOp::Delete(3),
            ],
        );
        s.save().unwrap();
        let again = Store::open(&dir, false).unwrap();
        assert_eq!(again.data.rows["d.t"].len(), 2);
        assert_eq!(again.data.lsn, 1);
        let wiped = Store::open(&dir, true).unwrap();
        assert!(wiped.data.rows.is_empty());
    }
}
