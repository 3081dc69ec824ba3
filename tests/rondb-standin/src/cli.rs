//! Command-line options as RonDB's `my_getopt` takes them: `--name=value`, `--name value`,
//! `-X value`, `-Xvalue`; `-` and `_` are the same in long names; unknown options are errors.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("unknown option '{0}'")]
    Unknown(String),
    #[error("option '{0}' requires an argument")]
    MissingValue(String),
    #[error("option '{name}' takes a number, not '{value}'")]
    NotANumber { name: String, value: String },
}

/// One option a program takes: its long name, short letter, and whether it takes a value.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    pub long: &'static str,
    pub short: Option<char>,
    pub takes_value: bool,
}

pub const fn flag(long: &'static str, short: Option<char>) -> Opt {
    Opt {
        long,
        short,
        takes_value: false,
    }
}

pub const fn value(long: &'static str, short: Option<char>) -> Opt {
    Opt {
        long,
        short,
        takes_value: true,
    }
}

/// Parsed options (by canonical long name) and positional arguments.
#[derive(Debug, Default)]
pub struct Parsed {
    pub values: BTreeMap<&'static str, String>,
    pub flags: BTreeMap<&'static str, bool>,
    pub positional: Vec<String>,
}

impl Parsed {
    pub fn value(&self, long: &str) -> Option<&str> {
        self.values.get(long).map(String::as_str)
    }

    pub fn flag(&self, long: &str) -> bool {
        self.flags.get(long).copied().unwrap_or(false)
    }

    pub fn number<T: std::str::FromStr>(&self, long: &str) -> Result<Option<T>, CliError> {
        match self.value(long) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| CliError::NotANumber {
                name: long.to_string(),
                value: v.to_string(),
            }),
        }
    }
}

fn norm(s: &str) -> String {
    s.replace('_', "-")
}

pub fn parse(args: &[String], opts: &[Opt]) -> Result<Parsed, CliError> {
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let name = norm(name);
            // `--skip-foo` / `--foo=0` turn a flag off, as my_getopt does.
            let (name, negated) = match name.strip_prefix("skip-") {
                Some(n) if opts.iter().any(|o| o.long == n && !o.takes_value) => {
                    (n.to_string(), true)
                }
                _ => (name, false),
            };
            let opt = opts
                .iter()
                .find(|o| o.long == name)
                .ok_or_else(|| CliError::Unknown(a.clone()))?;
            if opt.takes_value {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        let v = args
                            .get(i)
                            .cloned()
                            .ok_or_else(|| CliError::MissingValue(a.clone()))?;
                        i += 1;
                        v
                    }
                };
                p.values.insert(opt.long, v);
            } else {
                let on = !negated
                    && !matches!(inline.as_deref(), Some("0") | Some("false") | Some("FALSE"));
                p.flags.insert(opt.long, on);
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().unwrap_or('-');
            let opt = opts
                .iter()
                .find(|o| o.short == Some(c))
                .ok_or_else(|| CliError::Unknown(a.clone()))?;
            let rest: String = chars.collect();
            if opt.takes_value {
                let v = if rest.is_empty() {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| CliError::MissingValue(a.clone()))?;
                    i += 1;
                    v
                } else {
                    rest
                };
                p.values.insert(opt.long, v);
            } else {
                p.flags.insert(opt.long, true);
                if !rest.is_empty() {
                    return Err(CliError::Unknown(a.clone()));
                }
            }
        } else {
            p.positional.push(a.clone());
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_options_as_my_getopt_does() {
        let opts = [
            value("ndb-connectstring", Some('c')),
            flag("initial", None),
            value("backupid", Some('b')),
        ];
        let args: Vec<String> = ["-c", "h:1186", "--initial", "--backupid=3", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse(&args, &opts).unwrap();
        assert_eq!(p.value("ndb-connectstring"), Some("h:1186"));
        assert!(p.flag("initial"));
        assert_eq!(p.number::<u32>("backupid").unwrap(), Some(3));
        assert_eq!(p.positional, vec!["x"]);
        let bad: Vec<String> = vec!["--bogus".into()];
        assert_eq!(
            parse(&bad, &opts).unwrap_err(),
            CliError::Unknown("--bogus".into())
        );
        let under: Vec<String> = vec!["--ndb_connectstring=a".into()];
        assert_eq!(
            parse(&under, &opts).unwrap().value("ndb-connectstring"),
            Some("a")
        );
    }
}
