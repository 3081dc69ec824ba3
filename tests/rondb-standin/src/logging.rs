//! RonDB's log line format: `2026-11-28 17:55:01 [MgmtSrvr] INFO     -- text`.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A log written to stdout and, when it has one, to a file (the cluster log, a node log).
pub struct Log {
    component: &'static str,
    file: Option<Mutex<std::fs::File>>,
}

impl Log {
    pub fn stdout(component: &'static str) -> Log {
        Log {
            component,
            file: None,
        }
    }

    pub fn to_file(component: &'static str, path: &Path) -> std::io::Result<Log> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Log {
            component,
            file: Some(Mutex::new(f)),
        })
    }

    fn line(&self, level: &str, text: &str) {
        let l = format!(
            "{} [{}] {level:<8} -- {text}\n",
            timestamp(),
            self.component
        );
        print!("{l}");
        let _ = std::io::stdout().flush();
        if let Some(f) = &self.file {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(l.as_bytes());
            }
        }
    }

    pub fn info(&self, text: &str) {
        self.line("INFO", text);
    }

    pub fn warn(&self, text: &str) {
        self.line("WARNING", text);
    }

    pub fn alert(&self, text: &str) {
        self.line("ALERT", text);
    }

    pub fn error(&self, text: &str) {
        self.line("ERROR", text);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_a_utc_timestamp() {
        let t = super::timestamp();
        assert_eq!(t.len(), 19);
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], " ");
    }
}
