//! Artifact mirrors: where the agents fetch a tarball whose download link names a server
//! they cannot reach.
//!
//! A desired state names its tarballs by URL (`RonDBDownloadLink`), and one desired state
//! serves every installation: the Docker demo's artifact server answers at
//! `http://artifacts:8080/`, a name that only exists on the demo's network. A cluster on one
//! machine (the local provider) gets the same tarballs from a directory instead, with a
//! mirror `http://artifacts:8080/rondb/=file:///…/tarballs/`: the link stays the user's, the
//! bytes come from the mirror, and the `.sha256` beside them is checked the same way. This
//! is the rule package managers use for mirrors (a prefix swapped for another), so a real
//! RonDB tarball behind a proxy or on a local disk works the same.

use std::fmt;
use std::str::FromStr;

/// Links starting with `prefix` are fetched from `replacement` followed by the rest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactMirror {
    pub prefix: String,
    pub replacement: String,
}

/// Why a `PREFIX=REPLACEMENT` mirror was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("artifact mirror {0:?} is not PREFIX=REPLACEMENT (for example http://artifacts:8080/rondb/=file:///srv/tarballs/)")]
    NotAPair(String),
    #[error("artifact mirror prefix {0:?} is not an http(s) URL ending in '/'")]
    BadPrefix(String),
    #[error("artifact mirror replacement {0:?} is neither an http(s) URL nor file:///ABSOLUTE/PATH ending in '/'")]
    BadReplacement(String),
}

fn is_http(s: &str) -> bool {
    url::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

fn is_file(s: &str) -> bool {
    s.strip_prefix("file://")
        .is_some_and(|p| p.starts_with('/') && !p.contains("/../"))
}

impl FromStr for ArtifactMirror {
    type Err = MirrorError;

    /// Both sides end in `/`, so a mirror never swaps half a path segment
    /// (`…/rondb` would also catch `…/rondb-old/`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, replacement) = s
            .split_once('=')
            .ok_or_else(|| MirrorError::NotAPair(s.to_string()))?;
        if !is_http(prefix) || !prefix.ends_with('/') {
            return Err(MirrorError::BadPrefix(prefix.to_string()));
        }
        if !(is_http(replacement) || is_file(replacement)) || !replacement.ends_with('/') {
            return Err(MirrorError::BadReplacement(replacement.to_string()));
        }
        Ok(ArtifactMirror {
            prefix: prefix.to_string(),
            replacement: replacement.to_string(),
        })
    }
}

impl fmt::Display for ArtifactMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.prefix, self.replacement)
    }
}

/// Where to fetch `url` from: through the mirror with the longest matching prefix (the most
/// specific one), or `url` itself when none matches.
pub fn resolve(mirrors: &[ArtifactMirror], url: &str) -> String {
    mirrors
        .iter()
        .filter(|m| url.starts_with(&m.prefix))
        .max_by_key(|m| m.prefix.len())
        .map(|m| format!("{}{}", m.replacement, &url[m.prefix.len()..]))
        .unwrap_or_else(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> ArtifactMirror {
        s.parse().unwrap()
    }

    #[test]
    fn a_matching_link_is_fetched_from_the_mirror_and_others_are_left_alone() {
        let mirrors = [m("http://artifacts:8080/rondb/=file:///srv/t/")];
        assert_eq!(
            resolve(
                &mirrors,
                "http://artifacts:8080/rondb/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz.sha256"
            ),
            "file:///srv/t/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz.sha256"
        );
        let other = "https://repo.hops.works/master/rondb-22.10.1-linux-glibc2.28-x86_64.tar.gz";
        assert_eq!(resolve(&mirrors, other), other);
        assert_eq!(resolve(&[], other), other);
    }

    #[test]
    fn the_most_specific_mirror_wins() {
        let mirrors = [
            m("http://a:8080/=http://proxy/all/"),
            m("http://a:8080/rondb/=file:///srv/rondb/"),
        ];
        assert_eq!(
            resolve(&mirrors, "http://a:8080/rondb/x"),
            "file:///srv/rondb/x"
        );
        assert_eq!(
            resolve(&mirrors, "http://a:8080/agent/y"),
            "http://proxy/all/agent/y"
        );
    }

    #[test]
    fn malformed_mirrors_are_refused_with_the_reason() {
        assert!(matches!(
            "http://a/".parse::<ArtifactMirror>(),
            Err(MirrorError::NotAPair(_))
        ));
        assert!(matches!(
            "http://a/rondb=file:///srv/".parse::<ArtifactMirror>(),
            Err(MirrorError::BadPrefix(_))
        ));
        assert!(matches!(
            "ftp://a/=file:///srv/".parse::<ArtifactMirror>(),
            Err(MirrorError::BadPrefix(_))
        ));
        assert!(matches!(
            "http://a/=file://relative/".parse::<ArtifactMirror>(),
            Err(MirrorError::BadReplacement(_))
        ));
        assert!(matches!(
            "http://a/=file:///srv".parse::<ArtifactMirror>(),
            Err(MirrorError::BadReplacement(_))
        ));
        let ok = m("http://a:8080/rondb/=file:///srv/t/");
        assert_eq!(ok.to_string().parse::<ArtifactMirror>(), Ok(ok));
    }
}
