//! Agent upgrades for real: download the tarball, check it against its published sha256
//! (`<url>.sha256`), unpack it next to the installed builds and point `current` at it. The
//! agent then restarts into `current/bin/ndb-agent`.
//!
//! A tarball holds `ndb-agent-<version>/bin/ndb-agent` and `ndb-agent-<version>/VERSION`.

use crate::backend::BackendError;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn failed(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::refused(format!("{what}: {e}"))
}

fn transient(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::transient(format!("{what}: {e}"))
}

async fn fetch(url: &str) -> Result<Vec<u8>, BackendError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| failed("http client", e))?;
    let r = client
        .get(url)
        .send()
        .await
        .map_err(|e| transient(&format!("cannot download {url}"), e))?;
    if !r.status().is_success() {
        return Err(failed(&format!("cannot download {url}"), r.status()));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| transient(&format!("download of {url} broke off"), e))
}

/// Installs `version` from `url` under `dir/versions/` and makes it `dir/current`.
/// Returns the new binary. Installing the version already current is a no-op.
pub async fn install(dir: &Path, version: &str, url: &str) -> Result<PathBuf, BackendError> {
    let home = dir.join("versions").join(version);
    let bin = home
        .join(format!("ndb-agent-{version}"))
        .join("bin/ndb-agent");
    if !bin.exists() {
        let tarball = fetch(url).await?;
        let expected = fetch(&format!("{url}.sha256")).await?;
        let expected = String::from_utf8_lossy(&expected)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_lowercase();
        let actual = format!("{:x}", Sha256::digest(&tarball));
        if expected != actual {
            return Err(BackendError::refused(format!(
                "{url}: sha256 {actual} does not match the published {expected}; not installed"
            )));
        }
        let tmp = dir.join("versions").join(format!(".{version}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| transient("versions dir", e))?;
        let gz = flate2::read::GzDecoder::new(tarball.as_slice());
        tar::Archive::new(gz)
            .unpack(&tmp)
            .map_err(|e| failed(&format!("{url} is not a gzipped tarball"), e))?;
        let unpacked = tmp.join(format!("ndb-agent-{version}"));
        let stated = std::fs::read_to_string(unpacked.join("VERSION")).unwrap_or_default();
        if stated.trim() != version {
            return Err(BackendError::refused(format!(
                "{url} holds version {:?}, not {version}",
                stated.trim()
            )));
        }
        if !unpacked.join("bin/ndb-agent").exists() {
            return Err(BackendError::refused(format!(
                "{url} holds no bin/ndb-agent"
            )));
        }
        let _ = std::fs::remove_dir_all(&home);
        std::fs::rename(&tmp, &home).map_err(|e| transient("install", e))?;
    }
    // Switch atomically: a new symlink renamed over the old one.
    let link_tmp = dir.join(".current.tmp");
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(home.join(format!("ndb-agent-{version}")), &link_tmp)
        .map_err(|e| transient("current link", e))?;
    std::fs::rename(&link_tmp, dir.join("current")).map_err(|e| transient("current link", e))?;
    super::write_durably(&dir.join("agent_version"), version.as_bytes())
        .map_err(|e| transient("agent_version", e))?;
    Ok(bin)
}
