//! The RonDB version every program reports. A tarball made by `package.sh` holds a `VERSION`
//! file next to `bin/`, so one binary copied into several tarballs reports each tarball's
//! version, as real RonDB programs report the version they were built as.

use std::fmt;
use std::path::Path;

/// What programs report when neither a `VERSION` file nor `RONDB_STANDIN_VERSION` says.
const DEFAULT: Version = Version {
    major: 24,
    minor: 10,
    build: 1,
};

/// The MySQL server version RonDB 24.10 is built on (reported as `mysql_version`).
pub const MYSQL_VERSION: Version = Version {
    major: 8,
    minor: 0,
    build: 37,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub build: u32,
}

impl Version {
    /// `NDB_MAKE_VERSION`: what the mgm protocol carries (`node.N.version`, `get nodeid`).
    pub fn packed(self) -> u32 {
        (self.major << 16) | (self.minor << 8) | self.build
    }

    pub fn from_packed(v: u32) -> Version {
        Version {
            major: v >> 16,
            minor: (v >> 8) & 0xff,
            build: v & 0xff,
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.trim().split('.').map(|p| p.parse::<u32>().ok());
        let v = Version {
            major: it.next()??,
            minor: it.next()??,
            build: it.next()??,
        };
        (it.next().is_none() && v.minor < 256 && v.build < 256).then_some(v)
    }

    /// The version of this program: `../VERSION` beside its `bin/`, else
    /// `RONDB_STANDIN_VERSION` (tests run the binary straight from the build directory).
    pub fn current() -> Version {
        let from_file = std::env::current_exe().ok().and_then(|exe| {
            let top = exe.parent()?.parent()?;
            read_version_file(&top.join("VERSION"))
        });
        from_file
            .or_else(|| {
                std::env::var("RONDB_STANDIN_VERSION")
                    .ok()
                    .and_then(|v| Version::parse(&v))
            })
            .unwrap_or(DEFAULT)
    }
}

fn read_version_file(p: &Path) -> Option<Version> {
    Version::parse(&std::fs::read_to_string(p).ok()?)
}

/// `ndbGetVersionString` as RonDB prints it: `RonDB-24.10.1`.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_as_ndb_make_version() {
        let v = Version::parse("24.10.17").unwrap();
        assert_eq!(v.packed(), 1575441);
        assert_eq!(Version::from_packed(524314).to_string(), "8.0.26");
        assert!(Version::parse("24.10").is_none());
        assert!(Version::parse("24.10.1.2").is_none());
    }
}
