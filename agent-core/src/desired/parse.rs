//! JSONC parsing that reports every problem of a document at once and never panics.

use super::validate::Violation;
use super::{DesiredState, BACKUP_FIELDS, EXTERNAL_NODE_FIELDS, FIELDS, OPTIONAL_FIELDS};
use serde_json::{Map, Value};
use std::fmt;

/// Deeper documents are refused before parsing: the JSONC parser recurses per level, and a
/// desired state never needs more than four levels.
pub const MAX_NESTING_DEPTH: usize = 32;
/// Larger documents are refused: a real desired state is a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Why a document is not a desired state. Every variant says where and what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("the document is {size} bytes; a desired state may be at most {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("line {line}, column {column}: the document is not UTF-8 text (is it a binary file?)")]
    NotUtf8 { line: usize, column: usize },
    #[error("line {line}, column {column}: nesting deeper than {max} levels; a desired state needs at most 4")]
    TooDeep {
        line: usize,
        column: usize,
        max: usize,
    },
    #[error("line {line}, column {column}: syntax error: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the document must be one JSON object {{ ... }}, found {found}")]
    NotAnObject { found: &'static str },
    #[error("{} problem(s):\n{}", .0.len(), list(.0))]
    Fields(Vec<Violation>),
}

fn list(v: &[Violation]) -> String {
    v.iter()
        .map(|x| format!("  - {x}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ParseError {
    /// Every individual problem as one line each (a syntax error is one problem).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ParseError::Fields(v) => v.iter().map(|x| x.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Parses a JSONC desired state. Unknown fields, missing required fields and values of the
/// wrong type are all collected; semantic rules are checked separately by
/// [`super::validate`].
pub fn parse(bytes: &[u8]) -> Result<DesiredState, ParseError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = line_col(&bytes[..e.valid_up_to()]);
            return Err(ParseError::NotUtf8 { line, column });
        }
    };
    if let Some(offset) = too_deep_at(text, MAX_NESTING_DEPTH) {
        let (line, column) = line_col(&text.as_bytes()[..offset]);
        return Err(ParseError::TooDeep {
            line,
            column,
            max: MAX_NESTING_DEPTH,
        });
    }
    let value: Value = json5::from_str(text).map_err(|e| syntax_error(&e))?;
    let obj = match value {
        Value::Object(m) => m,
        other => {
            return Err(ParseError::NotAnObject {
                found: kind_of(&other),
            })
        }
    };
    from_object(obj)
}

fn from_object(mut obj: Map<String, Value>) -> Result<DesiredState, ParseError> {
    let mut problems = Vec::new();
    check_keys("", &obj, FIELDS, OPTIONAL_FIELDS, &mut problems);
    obj.retain(|k, _| FIELDS.contains(&k.as_str()));
    let template = match serde_json::to_value(DesiredState::example()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // Nested objects: unknown keys get their own hints.
    if let Some(Value::Array(items)) = obj.get_mut("SingleBackups") {
        for (i, item) in items.iter_mut().enumerate() {
            if let Value::Object(m) = item {
                let path = format!("SingleBackups[{i}].");
                check_keys(&path, m, BACKUP_FIELDS, &["SinkParameters"], &mut problems);
                m.retain(|k, _| BACKUP_FIELDS.contains(&k.as_str()));
            }
        }
    }
    if let Some(Value::Object(m)) = obj.get_mut("RestoreFromBackup") {
        check_keys(
            "RestoreFromBackup.",
            m,
            BACKUP_FIELDS,
            &["SinkParameters"],
            &mut problems,
        );
        m.retain(|k, _| BACKUP_FIELDS.contains(&k.as_str()));
    }
    if let Some(Value::Array(items)) = obj.get_mut("ExternallyManagedNodes") {
        for (i, item) in items.iter_mut().enumerate() {
            if let Value::Object(m) = item {
                let path = format!("ExternallyManagedNodes[{i}].");
                check_keys(&path, m, EXTERNAL_NODE_FIELDS, &[], &mut problems);
                m.retain(|k, _| EXTERNAL_NODE_FIELDS.contains(&k.as_str()));
            }
        }
    }
    // Fill missing required fields from the template so the rest can still be type-checked.
    let mut replaced: Vec<String> = Vec::new();
    for f in FIELDS {
        if !obj.contains_key(*f) && !OPTIONAL_FIELDS.contains(f) {
            if let Some(v) = template.get(*f) {
                obj.insert((*f).to_string(), v.clone());
                replaced.push((*f).to_string());
            }
        }
    }
    // Deserialize; each failing field is reported, replaced by a known-good value, and the
    // rest of the document is checked again, so all type errors show at once.
    for _ in 0..=FIELDS.len() {
        let de = Value::Object(obj.clone());
        match serde_path_to_error::deserialize::<_, DesiredState>(de) {
            Ok(state) => {
                if problems.is_empty() {
                    return Ok(state);
                }
                // Also report the rules broken by the fields that did parse, leaving out
                // any rule that involves a field we had to fill in.
                for v in super::validate(&state) {
                    let text = v.to_string();
                    if !replaced.iter().any(|r| mentions(&text, r)) {
                        problems.push(v);
                    }
                }
                return Err(ParseError::Fields(problems));
            }
            Err(err) => {
                let path = err.path().to_string();
                let top = top_level_key(&path);
                let offending = lookup(&obj, &path);
                problems.push(Violation::new(
                    if path.is_empty() || path == "." {
                        "(document)".to_string()
                    } else {
                        path.clone()
                    },
                    offending.map(|v| short(&v)),
                    clean_serde_message(&err.inner().to_string()),
                ));
                if let Some(k) = &top {
                    replaced.push(k.clone());
                }
                match (top, template.get(&top_level_key(&path).unwrap_or_default())) {
                    (Some(k), Some(good)) => {
                        obj.insert(k, good.clone());
                    }
                    (Some(k), None) => {
                        obj.remove(&k);
                    }
                    (None, _) => break,
                }
            }
        }
    }
    Err(ParseError::Fields(problems))
}

/// Whether `text` names `word` as a whole identifier (not as part of a longer field name).
fn mentions(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

fn check_keys(
    prefix: &str,
    obj: &Map<String, Value>,
    known: &[&str],
    optional: &[&str],
    problems: &mut Vec<Violation>,
) {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            let hint = did_you_mean(k, known)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_else(|| format!("; known fields here: {}", known.join(", ")));
            problems.push(Violation::new(
                format!("{prefix}{k}"),
                None,
                format!("unknown field (a typo must never silently do nothing){hint}"),
            ));
        }
    }
    for k in known {
        if !optional.contains(k) && !obj.contains_key(*k) {
            problems.push(Violation::new(
                format!("{prefix}{k}"),
                None,
                "required field is missing".to_string(),
            ));
        }
    }
}

/// The closest known name, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| {
            let d = strsim::levenshtein(&lower, &k.to_ascii_lowercase());
            (d, *k)
        })
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn top_level_key(path: &str) -> Option<String> {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    let k = &path[..end];
    (!k.is_empty()).then(|| k.to_string())
}

fn lookup(obj: &Map<String, Value>, path: &str) -> Option<Value> {
    let top = top_level_key(path)?;
    let mut cur = obj.get(&top)?;
    let mut rest = &path[top.len()..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let idx: usize = r[..end].parse().ok()?;
            cur = cur.get(idx)?;
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else {
            return None;
        }
    }
    Some(cur.clone())
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let cut: String = s.chars().take(57).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn clean_serde_message(m: &str) -> String {
    m.replace("invalid type: ", "wrong type: ")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn syntax_error(e: &json5::Error) -> ParseError {
    match e {
        json5::Error::Message { msg, location } => {
            let (line, column) = location
                .as_ref()
                .map(|l| (l.line, l.column))
                .unwrap_or((1, 1));
            // pest's message repeats the position and source line; keep the first line.
            let first = msg
                .lines()
                .last()
                .unwrap_or(msg)
                .trim()
                .trim_start_matches("= ")
                .to_string();
            ParseError::Syntax {
                line,
                column,
                message: if first.is_empty() { msg.clone() } else { first },
            }
        }
    }
}

/// 1-based line and column (in characters) just after `prefix`.
fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|b| **b == b'\n').count() + 1;
    let start = prefix
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let column = String::from_utf8_lossy(&prefix[start..]).chars().count() + 1;
    (line, column)
}

/// Byte offset of the first bracket that nests deeper than `max`, skipping strings and
/// comments, so the recursive parser never sees a document that could overflow its stack.
fn too_deep_at(text: &str, max: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

impl fmt::Display for super::validate::Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.field)?;
        match (&self.old, &self.value) {
            (Some(old), Some(new)) => write!(f, " (was {old}, now {new})")?,
            (None, Some(v)) => write!(f, " = {v}")?,
            _ => {}
        }
        write!(f, ": {}", self.rule)
    }
}
