//! The SQL the stand-in `mysqld` understands, and MySQL's errors for it. A small hand-written
//! parser: the stand-in only needs the statements a control plane and its tests send (a
//! liveness `SELECT 1`, the version, databases, one shape of NDB table and primary-key row
//! access), and anything else must fail the way MySQL fails, never panic, so that a test
//! which strays outside the subset sees a clear error instead of a wrong answer.

use std::fmt;

/// A MySQL error as the server sends it: code, SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub code: u16,
    pub state: &'static str,
    pub message: String,
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERROR {} ({}): {}", self.code, self.state, self.message)
    }
}

impl std::error::Error for SqlError {}

impl SqlError {
    pub fn new(code: u16, state: &'static str, message: impl Into<String>) -> SqlError {
        SqlError {
            code,
            state,
            message: message.into(),
        }
    }

    /// 1064, with MySQL's text: `near` is the statement from the offending token on.
    pub fn syntax(near: &str) -> SqlError {
        let near: String = near.chars().take(80).collect();
        SqlError::new(
            1064,
            "42000",
            format!(
                "You have an error in your SQL syntax; check the manual that corresponds to \
                 your MySQL server version for the right syntax to use near '{near}' at line 1"
            ),
        )
    }

    pub fn empty_query() -> SqlError {
        SqlError::new(1065, "42000", "Query was empty")
    }

    pub fn access_denied(user: &str, host: &str, with_password: bool) -> SqlError {
        let yes = if with_password { "YES" } else { "NO" };
        SqlError::new(
            1045,
            "28000",
            format!("Access denied for user '{user}'@'{host}' (using password: {yes})"),
        )
    }

    pub fn no_database() -> SqlError {
        SqlError::new(1046, "3D000", "No database selected")
    }

    pub fn unknown_database(db: &str) -> SqlError {
        SqlError::new(1049, "42000", format!("Unknown database '{db}'"))
    }

    pub fn database_exists(db: &str) -> SqlError {
        SqlError::new(
            1007,
            "HY000",
            format!("Can't create database '{db}'; database exists"),
        )
    }

    pub fn table_exists(table: &str) -> SqlError {
        SqlError::new(1050, "42S01", format!("Table '{table}' already exists"))
    }

    /// `table` is `db.table`, as MySQL names it in this message.
    pub fn no_such_table(table: &str) -> SqlError {
        SqlError::new(1146, "42S02", format!("Table '{table}' doesn't exist"))
    }

    pub fn unknown_column(column: &str, clause: &str) -> SqlError {
        SqlError::new(
            1054,
            "42S22",
            format!("Unknown column '{column}' in '{clause}'"),
        )
    }

    pub fn column_count(row: usize) -> SqlError {
        SqlError::new(
            1136,
            "21S01",
            format!("Column count doesn't match value count at row {row}"),
        )
    }

    pub fn not_null(column: &str) -> SqlError {
        SqlError::new(1048, "23000", format!("Column '{column}' cannot be null"))
    }

    pub fn too_long(column: &str, row: usize) -> SqlError {
        SqlError::new(
            1406,
            "22001",
            format!("Data too long for column '{column}' at row {row}"),
        )
    }

    pub fn bad_integer(column: &str, value: &str, row: usize) -> SqlError {
        SqlError::new(
            1366,
            "HY000",
            format!("Incorrect integer value: '{value}' for column '{column}' at row {row}"),
        )
    }

    pub fn unknown_variable(name: &str) -> SqlError {
        SqlError::new(1193, "HY000", format!("Unknown system variable '{name}'"))
    }

    /// What the stand-in does not model (MySQL's `ER_NOT_SUPPORTED_YET`).
    pub fn unsupported(what: &str) -> SqlError {
        SqlError::new(
            1235,
            "42000",
            format!("This version of MySQL doesn't yet support '{what}'"),
        )
    }

    pub fn unknown_engine(engine: &str) -> SqlError {
        SqlError::new(1286, "42000", format!("Unknown storage engine '{engine}'"))
    }

    /// How MySQL reports an NDB temporary error (`ER_GET_TEMPORARY_ERRMSG`), e.g. 4009.
    pub fn ndb_temporary(code: u32, text: &str) -> SqlError {
        SqlError::new(
            1297,
            "HY000",
            format!("Got temporary error {code} '{text}' from NDBCLUSTER"),
        )
    }

    /// How MySQL reports a permanent NDB error (`ER_GET_ERRMSG`).
    pub fn ndb_error(code: u32, text: &str) -> SqlError {
        SqlError::new(
            1296,
            "HY000",
            format!("Got error {code} '{text}' from NDBCLUSTER"),
        )
    }

    pub fn unknown_command() -> SqlError {
        SqlError::new(1047, "08S01", "Unknown command")
    }
}

/// `[db.]name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub db: Option<String>,
    pub name: String,
}

/// A value in `VALUES (...)` or `WHERE k = ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    Int(i64),
    Str(String),
    Null,
}

/// An item of a `SELECT` without `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Literal(Literal),
    /// `@@name` (scope prefix removed, lower-cased).
    Variable(String),
    Version,
    Database,
}

/// An item of a `SELECT ... FROM t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectColumn {
    Star,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// `SELECT 1`, `SELECT @@version, VERSION()`: (expression, column label).
    SelectExprs(Vec<(Expr, String)>),
    /// `SELECT cols FROM t [WHERE col = lit] [LIMIT n]`.
    SelectRows {
        table: TableName,
        columns: Vec<SelectColumn>,
        filter: Option<(String, Literal)>,
        limit: Option<u64>,
    },
    Count(TableName),
    CreateDatabase {
        name: String,
        if_not_exists: bool,
    },
    /// `CREATE TABLE t (key BIGINT PRIMARY KEY, value VARCHAR(n)) ENGINE=NDBCLUSTER`.
    CreateTable {
        table: TableName,
        if_not_exists: bool,
        key_column: String,
        value_column: String,
        value_len: u32,
    },
    /// `INSERT`/`REPLACE`: both write-or-overwrite in the stand-in.
    Insert {
        table: TableName,
        columns: Option<Vec<String>>,
        rows: Vec<Vec<Literal>>,
    },
    Delete {
        table: TableName,
        column: String,
        value: Literal,
    },
    Use(String),
    ShowDatabases,
    ShowTables(Option<String>),
    ShowWarnings,
    /// `SET ...` (session settings clients send on connect): accepted, ignored.
    Set,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Int(String),
    Str(String),
    Punct(char),
}

struct Lexed {
    toks: Vec<(Tok, usize)>,
}

fn lex(sql: &str) -> Result<Lexed, SqlError> {
    let b = sql.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' || (c == b'-' && b.get(i + 1) == Some(&b'-')) {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            match sql[i + 2..].find("*/") {
                Some(end) => i = i + 2 + end + 2,
                None => return Err(SqlError::syntax(&sql[i..])),
            }
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            // `1abc` is an identifier in MySQL; `1.5` is not an integer: both unsupported.
            if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_' || b[i] == b'.') {
                return Err(SqlError::syntax(&sql[start..]));
            }
            toks.push((Tok::Int(sql[start..i].to_string()), start));
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            toks.push((Tok::Word(sql[start..i].to_string()), start));
        } else if c == b'`' {
            let start = i;
            let mut s = String::new();
            i += 1;
            loop {
                match sql[i..].find('`') {
                    None => return Err(SqlError::syntax(&sql[start..])),
                    Some(end) => {
                        s.push_str(&sql[i..i + end]);
                        i += end + 1;
                        if b.get(i) == Some(&b'`') {
                            s.push('`');
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            toks.push((Tok::Quoted(s), start));
        } else if c == b'\'' || c == b'"' {
            let start = i;
            let quote = c as char;
            let mut s = String::new();
            let mut chars = sql[i + 1..].char_indices();
            let mut closed = None;
            while let Some((off, ch)) = chars.next() {
                if ch == '\\' {
                    match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, 'r')) => s.push('\r'),
                        Some((_, '0')) => s.push('\0'),
                        Some((_, other)) => s.push(other),
                        None => break,
                    }
                } else if ch == quote {
                    // A doubled quote is one quote character.
                    if sql[i + 1 + off + 1..].starts_with(quote) {
                        s.push(quote);
                        chars.next();
                    } else {
                        closed = Some(i + 1 + off + 1);
                        break;
                    }
                } else {
                    s.push(ch);
                }
            }
            match closed {
                Some(end) => {
                    toks.push((Tok::Str(s), start));
                    i = end;
                }
                None => return Err(SqlError::syntax(&sql[start..])),
            }
        } else if b"(),;.=*@-".contains(&c) {
            toks.push((Tok::Punct(c as char), i));
            i += 1;
        } else {
            return Err(SqlError::syntax(&sql[i..]));
        }
    }
    Ok(Lexed { toks })
}

struct Parser<'a> {
    sql: &'a str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

type PResult<T> = Result<T, SqlError>;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n).map(|(t, _)| t)
    }

    /// 1064 at the current token (or at the end of the statement).
    fn error(&self) -> SqlError {
        match self.toks.get(self.pos) {
            Some((_, off)) => SqlError::syntax(self.sql[*off..].trim_end()),
            None => SqlError::syntax(""),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn kw(&mut self, kw: &str) -> PResult<()> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn eat_punct(&mut self, p: char) -> bool {
        if self.peek() == Some(&Tok::Punct(p)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn punct(&mut self, p: char) -> PResult<()> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn ident(&mut self) -> PResult<String> {
        match self.peek() {
            Some(Tok::Word(w)) if !is_reserved(w) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            Some(Tok::Quoted(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.error()),
        }
    }

    fn table_name(&mut self) -> PResult<TableName> {
        let first = self.ident()?;
        if self.eat_punct('.') {
            let name = self.ident()?;
            Ok(TableName {
                db: Some(first),
                name,
            })
        } else {
            Ok(TableName {
                db: None,
                name: first,
            })
        }
    }

    fn uint(&mut self) -> PResult<u64> {
        match self.peek() {
            Some(Tok::Int(n)) => {
                let n = n.parse().map_err(|_| self.error())?;
                self.pos += 1;
                Ok(n)
            }
            _ => Err(self.error()),
        }
    }

    fn literal(&mut self) -> PResult<Literal> {
        let negative = self.eat_punct('-');
        match self.peek().cloned() {
            Some(Tok::Int(n)) => {
                let text = if negative { format!("-{n}") } else { n };
                let v = text.parse::<i64>().map_err(|_| self.error())?;
                self.pos += 1;
                Ok(Literal::Int(v))
            }
            Some(Tok::Str(s)) if !negative => {
                self.pos += 1;
                Ok(Literal::Str(s))
            }
            Some(Tok::Word(w)) if !negative && w.eq_ignore_ascii_case("NULL") => {
                self.pos += 1;
                Ok(Literal::Null)
            }
            _ => Err(self.error()),
        }
    }

    /// Optional `;`, then nothing.
    fn end(&mut self) -> PResult<()> {
        while self.eat_punct(';') {}
        if self.pos < self.toks.len() {
            Err(self.error())
        } else {
            Ok(())
        }
    }

    fn statement(&mut self) -> PResult<Statement> {
        let Some(Tok::Word(verb)) = self.peek().cloned() else {
            return Err(self.error());
        };
        let verb = verb.to_ascii_uppercase();
        let st = match verb.as_str() {
            "SELECT" => {
                self.pos += 1;
                self.select()?
            }
            "CREATE" => {
                self.pos += 1;
                self.create()?
            }
            "INSERT" | "REPLACE" => {
                self.pos += 1;
                self.insert()?
            }
            "DELETE" => {
                self.pos += 1;
                self.kw("FROM")?;
                let table = self.table_name()?;
                self.kw("WHERE")?;
                let column = self.ident()?;
                self.punct('=')?;
                let value = self.literal()?;
                Statement::Delete {
                    table,
                    column,
                    value,
                }
            }
            "USE" => {
                self.pos += 1;
                Statement::Use(self.ident()?)
            }
            "SHOW" => {
                self.pos += 1;
                if self.eat_kw("DATABASES") || self.eat_kw("SCHEMAS") {
                    Statement::ShowDatabases
                } else if self.eat_kw("TABLES") {
                    let db = if self.eat_kw("FROM") || self.eat_kw("IN") {
                        Some(self.ident()?)
                    } else {
                        None
                    };
                    Statement::ShowTables(db)
                } else if self.eat_kw("WARNINGS") {
                    Statement::ShowWarnings
                } else {
                    return Err(self.error());
                }
            }
            "SET" => {
                self.pos = self.toks.len();
                Statement::Set
            }
            "DROP" | "UPDATE" | "ALTER" | "TRUNCATE" | "BEGIN" | "START" | "COMMIT"
            | "ROLLBACK" | "GRANT" | "REVOKE" | "RENAME" | "LOCK" | "UNLOCK" | "FLUSH"
            | "ANALYZE" | "OPTIMIZE" => {
                return Err(SqlError::unsupported(&format!(
                    "{verb} in the RonDB stand-in"
                )));
            }
            _ => return Err(self.error()),
        };
        self.end()?;
        Ok(st)
    }

    fn select(&mut self) -> PResult<Statement> {
        // SELECT COUNT(*) FROM t
        if self.is_kw("COUNT") && self.peek_at(1) == Some(&Tok::Punct('(')) {
            self.pos += 1;
            self.punct('(')?;
            self.punct('*')?;
            self.punct(')')?;
            self.kw("FROM")?;
            let table = self.table_name()?;
            return Ok(Statement::Count(table));
        }
        let mut exprs = Vec::new();
        let mut columns = Vec::new();
        loop {
            let start = self.toks.get(self.pos).map(|(_, o)| *o);
            if self.eat_punct('*') {
                columns.push(SelectColumn::Star);
            } else if let Some(e) = self.expr()? {
                let end = self
                    .toks
                    .get(self.pos)
                    .map(|(_, o)| *o)
                    .unwrap_or(self.sql.len());
                let text = start
                    .and_then(|s| self.sql.get(s..end))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let label = self.alias()?.unwrap_or(text);
                exprs.push((e, label));
            } else {
                let name = self.ident()?;
                // `t.k` / `db.t.k`: the column is the last part.
                let mut name = name;
                while self.eat_punct('.') {
                    name = if self.eat_punct('*') {
                        columns.push(SelectColumn::Star);
                        String::new()
                    } else {
                        self.ident()?
                    };
                }
                if !name.is_empty() {
                    let _ = self.alias()?;
                    columns.push(SelectColumn::Named(name));
                }
            }
            if !self.eat_punct(',') {
                break;
            }
        }
        if self.eat_kw("FROM") {
            if !exprs.is_empty() {
                return Err(SqlError::unsupported(
                    "expressions in a SELECT ... FROM in the RonDB stand-in",
                ));
            }
            let table = self.table_name()?;
            let filter = if self.eat_kw("WHERE") {
                let col = self.ident()?;
                self.punct('=')?;
                Some((col, self.literal()?))
            } else {
                None
            };
            let limit = self.limit()?;
            return Ok(Statement::SelectRows {
                table,
                columns,
                filter,
                limit,
            });
        }
        if let Some(c) = columns.first() {
            return Err(match c {
                SelectColumn::Star => SqlError::new(1096, "HY000", "No tables used"),
                SelectColumn::Named(n) => SqlError::unknown_column(n, "field list"),
            });
        }
        self.limit()?;
        Ok(Statement::SelectExprs(exprs))
    }

    fn limit(&mut self) -> PResult<Option<u64>> {
        if self.eat_kw("LIMIT") {
            Ok(Some(self.uint()?))
        } else {
            Ok(None)
        }
    }

    fn alias(&mut self) -> PResult<Option<String>> {
        if self.eat_kw("AS") {
            return match self.peek().cloned() {
                Some(Tok::Str(s)) => {
                    self.pos += 1;
                    Ok(Some(s))
                }
                _ => self.ident().map(Some),
            };
        }
        match self.peek() {
            Some(Tok::Quoted(_)) => self.ident().map(Some),
            Some(Tok::Word(w)) if !is_reserved(w) => self.ident().map(Some),
            _ => Ok(None),
        }
    }

    /// A constant expression, or `None` when the next item is a column name.
    fn expr(&mut self) -> PResult<Option<Expr>> {
        match self.peek().cloned() {
            Some(Tok::Punct('-')) | Some(Tok::Int(_)) | Some(Tok::Str(_)) => {
                Ok(Some(Expr::Literal(self.literal()?)))
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("NULL") => {
                Ok(Some(Expr::Literal(self.literal()?)))
            }
            Some(Tok::Punct('@')) => {
                self.pos += 1;
                self.punct('@')?;
                let mut name = self.ident()?;
                if ["global", "session", "local"]
                    .iter()
                    .any(|s| name.eq_ignore_ascii_case(s))
                    && self.eat_punct('.')
                {
                    name = self.ident()?;
                }
                Ok(Some(Expr::Variable(name.to_ascii_lowercase())))
            }
            Some(Tok::Word(w)) if self.peek_at(1) == Some(&Tok::Punct('(')) => {
                let f = w.to_ascii_uppercase();
                let e = match f.as_str() {
                    "VERSION" => Expr::Version,
                    "DATABASE" | "SCHEMA" => Expr::Database,
                    _ => return Err(self.error()),
                };
                self.pos += 1;
                self.punct('(')?;
                self.punct(')')?;
                Ok(Some(e))
            }
            _ => Ok(None),
        }
    }

    fn create(&mut self) -> PResult<Statement> {
        if self.eat_kw("DATABASE") || self.eat_kw("SCHEMA") {
            let if_not_exists = self.if_not_exists()?;
            let name = self.ident()?;
            self.table_options()?;
            return Ok(Statement::CreateDatabase {
                name,
                if_not_exists,
            });
        }
        if !self.eat_kw("TABLE") {
            if self.is_kw("TEMPORARY")
                || self.is_kw("INDEX")
                || self.is_kw("UNIQUE")
                || self.is_kw("VIEW")
                || self.is_kw("USER")
                || self.is_kw("TABLESPACE")
                || self.is_kw("PROCEDURE")
                || self.is_kw("FUNCTION")
                || self.is_kw("TRIGGER")
            {
                return Err(SqlError::unsupported(
                    "CREATE other than DATABASE and TABLE in the RonDB stand-in",
                ));
            }
            return Err(self.error());
        }
        let if_not_exists = self.if_not_exists()?;
        let table = self.table_name()?;
        self.punct('(')?;
        // (name, type, len, primary key)
        let mut cols: Vec<(String, String, Option<u64>, bool)> = Vec::new();
        let mut pk: Option<String> = None;
        loop {
            if self.eat_kw("PRIMARY") {
                self.kw("KEY")?;
                self.punct('(')?;
                let c = self.ident()?;
                self.punct(')')?;
                if pk.replace(c).is_some() {
                    return Err(SqlError::new(1068, "42000", "Multiple primary key defined"));
                }
            } else {
                let name = self.ident()?;
                let ty = match self.peek() {
                    Some(Tok::Word(w)) => w.to_ascii_uppercase(),
                    _ => return Err(self.error()),
                };
                self.pos += 1;
                let len = if self.eat_punct('(') {
                    let n = self.uint()?;
                    self.punct(')')?;
                    Some(n)
                } else {
                    None
                };
                let mut primary = false;
                loop {
                    if self.eat_kw("NOT") {
                        self.kw("NULL")?;
                    } else if self.eat_kw("NULL") {
                    } else if self.eat_kw("PRIMARY") {
                        self.kw("KEY")?;
                        primary = true;
                    } else if self.eat_kw("DEFAULT") {
                        self.literal()?;
                    } else if self.eat_kw("CHARACTER") {
                        self.kw("SET")?;
                        self.ident()?;
                    } else if self.eat_kw("CHARSET") || self.eat_kw("COLLATE") {
                        self.ident()?;
                    } else {
                        break;
                    }
                }
                if primary && pk.replace(name.clone()).is_some() {
                    return Err(SqlError::new(1068, "42000", "Multiple primary key defined"));
                }
                cols.push((name, ty, len, primary));
            }
            if !self.eat_punct(',') {
                break;
            }
        }
        self.punct(')')?;
        let engine = self.table_options()?;
        let shape = "tables other than (k BIGINT PRIMARY KEY, v VARCHAR(n)) \
                     ENGINE=NDBCLUSTER in the RonDB stand-in";
        match engine.as_deref().map(str::to_ascii_uppercase).as_deref() {
            Some("NDBCLUSTER") | Some("NDB") => {}
            _ => return Err(SqlError::unsupported(shape)),
        }
        let Some(pk) = pk else {
            return Err(SqlError::unsupported(shape));
        };
        if cols.len() != 2 {
            return Err(SqlError::unsupported(shape));
        }
        let Some(key) = cols.iter().find(|c| c.0.eq_ignore_ascii_case(&pk)) else {
            return Err(SqlError::new(
                1072,
                "42000",
                format!("Key column '{pk}' doesn't exist in table"),
            ));
        };
        let Some(value) = cols.iter().find(|c| !c.0.eq_ignore_ascii_case(&pk)) else {
            return Err(SqlError::unsupported(shape));
        };
        let value_len = match (key.1.as_str(), value.1.as_str(), value.2) {
            ("BIGINT", "VARCHAR", Some(n)) => {
                u32::try_from(n).map_err(|_| SqlError::unsupported(shape))?
            }
            _ => return Err(SqlError::unsupported(shape)),
        };
        Ok(Statement::CreateTable {
            table,
            if_not_exists,
            key_column: key.0.clone(),
            value_column: value.0.clone(),
            value_len,
        })
    }

    fn if_not_exists(&mut self) -> PResult<bool> {
        if self.eat_kw("IF") {
            self.kw("NOT")?;
            self.kw("EXISTS")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// `ENGINE=x`, `[DEFAULT] CHARSET=x`, `COLLATE x`, `COMMENT 'x'`; returns the engine.
    fn table_options(&mut self) -> PResult<Option<String>> {
        let mut engine = None;
        loop {
            self.eat_punct(',');
            if self.eat_kw("ENGINE") {
                self.eat_punct('=');
                engine = Some(self.ident()?);
                continue;
            }
            self.eat_kw("DEFAULT");
            if self.eat_kw("CHARACTER") {
                self.kw("SET")?;
            } else if !(self.eat_kw("CHARSET") || self.eat_kw("COLLATE")) {
                if self.eat_kw("COMMENT") {
                    self.eat_punct('=');
                    match self.peek() {
                        Some(Tok::Str(_)) => self.pos += 1,
                        _ => return Err(self.error()),
                    }
                    continue;
                }
                return Ok(engine);
            }
            self.eat_punct('=');
            self.ident()?;
        }
    }

    fn insert(&mut self) -> PResult<Statement> {
        self.eat_kw("INTO");
        let table = self.table_name()?;
        let columns = if self.eat_punct('(') {
            let mut cols = vec![self.ident()?];
            while self.eat_punct(',') {
                cols.push(self.ident()?);
            }
            self.punct(')')?;
            Some(cols)
        } else {
            None
        };
        if !(self.eat_kw("VALUES") || self.eat_kw("VALUE")) {
            return Err(self.error());
        }
        let mut rows = Vec::new();
        loop {
            self.punct('(')?;
            let mut row = vec![self.literal()?];
            while self.eat_punct(',') {
                row.push(self.literal()?);
            }
            self.punct(')')?;
            rows.push(row);
            if !self.eat_punct(',') {
                break;
            }
        }
        Ok(Statement::Insert {
            table,
            columns,
            rows,
        })
    }
}

/// Words that cannot be a bare identifier where the parser would otherwise take one.
fn is_reserved(w: &str) -> bool {
    const RESERVED: &[&str] = &[
        "SELECT", "FROM", "WHERE", "LIMIT", "VALUES", "VALUE", "INTO", "AS", "NULL", "NOT",
        "PRIMARY", "KEY", "DEFAULT", "ENGINE", "SET", "TABLE", "DATABASE", "CREATE", "INSERT",
        "DELETE", "IF", "EXISTS",
    ];
    RESERVED.iter().any(|r| w.eq_ignore_ascii_case(r))
}

/// Parses one statement (an optional trailing `;` allowed).
pub fn parse(sql: &str) -> Result<Statement, SqlError> {
    let lexed = lex(sql)?;
    if lexed.toks.iter().all(|(t, _)| *t == Tok::Punct(';')) {
        return Err(SqlError::empty_query());
    }
    let mut p = Parser {
        sql,
        toks: lexed.toks,
        pos: 0,
    };
    p.statement()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(db: Option<&str>, name: &str) -> TableName {
        TableName {
            db: db.map(String::from),
            name: name.into(),
        }
    }

    #[test]
    fn selects_constants_and_variables() {
        assert_eq!(
            parse("SELECT 1").unwrap(),
            Statement::SelectExprs(vec![(Expr::Literal(Literal::Int(1)), "1".into())])
        );
        assert_eq!(
            parse("select -42;").unwrap(),
            Statement::SelectExprs(vec![(Expr::Literal(Literal::Int(-42)), "-42".into())])
        );
        assert_eq!(
            parse("SELECT @@version").unwrap(),
            Statement::SelectExprs(vec![(Expr::Variable("version".into()), "@@version".into())])
        );
        assert_eq!(
            parse("SELECT VERSION() AS v, database()").unwrap(),
            Statement::SelectExprs(vec![
                (Expr::Version, "v".into()),
                (Expr::Database, "database()".into())
            ])
        );
        // What mysql_async and the mysql client send on connect.
        assert_eq!(
            parse("SELECT @@max_allowed_packet,@@wait_timeout").unwrap(),
            Statement::SelectExprs(vec![
                (
                    Expr::Variable("max_allowed_packet".into()),
                    "@@max_allowed_packet".into()
                ),
                (
                    Expr::Variable("wait_timeout".into()),
                    "@@wait_timeout".into()
                )
            ])
        );
        assert_eq!(
            parse("select @@session.version_comment limit 1").unwrap(),
            Statement::SelectExprs(vec![(
                Expr::Variable("version_comment".into()),
                "@@session.version_comment".into()
            )])
        );
        assert_eq!(parse("SET NAMES utf8mb4").unwrap(), Statement::Set);
    }

    #[test]
    fn databases_and_use() {
        assert_eq!(
            parse("CREATE DATABASE d").unwrap(),
            Statement::CreateDatabase {
                name: "d".into(),
                if_not_exists: false
            }
        );
        assert_eq!(
            parse("create schema if not exists `my db`;").unwrap(),
            Statement::CreateDatabase {
                name: "my db".into(),
                if_not_exists: true
            }
        );
        assert_eq!(parse("USE `d`").unwrap(), Statement::Use("d".into()));
        assert_eq!(parse("show databases").unwrap(), Statement::ShowDatabases);
        assert_eq!(parse("SHOW TABLES").unwrap(), Statement::ShowTables(None));
        assert_eq!(
            parse("SHOW TABLES FROM d").unwrap(),
            Statement::ShowTables(Some("d".into()))
        );
    }

    #[test]
    fn create_table_takes_the_one_ndb_shape() {
        let want = Statement::CreateTable {
            table: t(Some("d"), "t"),
            if_not_exists: false,
            key_column: "id".into(),
            value_column: "name".into(),
            value_len: 64,
        };
        assert_eq!(
            parse("CREATE TABLE d.t (id BIGINT PRIMARY KEY, name VARCHAR(64)) ENGINE=NDBCLUSTER")
                .unwrap(),
            want
        );
        assert_eq!(
            parse(
                "create table `d`.`t` (`id` bigint not null, `name` varchar(64) default null, \
                 primary key (`id`)) engine = ndb default charset=utf8mb4;"
            )
            .unwrap(),
            want
        );
        assert!(matches!(
            parse("CREATE TABLE IF NOT EXISTS t (v VARCHAR(8), k BIGINT PRIMARY KEY) ENGINE=NDB"),
            Ok(Statement::CreateTable { if_not_exists: true, ref key_column, .. }) if key_column == "k"
        ));
        for bad in [
            "CREATE TABLE t (k BIGINT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB",
            "CREATE TABLE t (k BIGINT PRIMARY KEY, v VARCHAR(10))",
            "CREATE TABLE t (k INT PRIMARY KEY, v VARCHAR(10)) ENGINE=NDBCLUSTER",
            "CREATE TABLE t (k BIGINT PRIMARY KEY, v TEXT) ENGINE=NDBCLUSTER",
            "CREATE TABLE t (k BIGINT, v VARCHAR(10)) ENGINE=NDBCLUSTER",
            "CREATE TABLE t (k BIGINT PRIMARY KEY, v VARCHAR(10), w INT) ENGINE=NDBCLUSTER",
        ] {
            assert_eq!(parse(bad).unwrap_err().code, 1235, "{bad}");
        }
    }

    #[test]
    fn inserts_and_replaces() {
        assert_eq!(
            parse("INSERT INTO t VALUES (1,'a'),(2,'b''c'),(-3,NULL)").unwrap(),
            Statement::Insert {
                table: t(None, "t"),
                columns: None,
                rows: vec![
                    vec![Literal::Int(1), Literal::Str("a".into())],
                    vec![Literal::Int(2), Literal::Str("b'c".into())],
                    vec![Literal::Int(-3), Literal::Null],
                ],
            }
        );
        assert_eq!(
            parse("replace into d.t (k, v) values (1, \"x\\ny\");").unwrap(),
            Statement::Insert {
                table: t(Some("d"), "t"),
                columns: Some(vec!["k".into(), "v".into()]),
                rows: vec![vec![Literal::Int(1), Literal::Str("x\ny".into())]],
            }
        );
    }

    #[test]
    fn reads_counts_and_deletes() {
        assert_eq!(
            parse("SELECT v FROM t WHERE k = 7").unwrap(),
            Statement::SelectRows {
                table: t(None, "t"),
                columns: vec![SelectColumn::Named("v".into())],
                filter: Some(("k".into(), Literal::Int(7))),
                limit: None,
            }
        );
        assert_eq!(
            parse("select * from `d`.`t` where `k`=-1 limit 5;").unwrap(),
            Statement::SelectRows {
                table: t(Some("d"), "t"),
                columns: vec![SelectColumn::Star],
                filter: Some(("k".into(), Literal::Int(-1))),
                limit: Some(5),
            }
        );
        assert_eq!(
            parse("SELECT k, v FROM t").unwrap(),
            Statement::SelectRows {
                table: t(None, "t"),
                columns: vec![
                    SelectColumn::Named("k".into()),
                    SelectColumn::Named("v".into())
                ],
                filter: None,
                limit: None,
            }
        );
        assert_eq!(
            parse("select count(*) from d.t").unwrap(),
            Statement::Count(t(Some("d"), "t"))
        );
        assert_eq!(
            parse("DELETE FROM t WHERE k = 3").unwrap(),
            Statement::Delete {
                table: t(None, "t"),
                column: "k".into(),
                value: Literal::Int(3),
            }
        );
    }

    /// Random statements built from SQL-ish fragments never panic the parser.
    #[test]
    fn survives_random_input() {
        const PARTS: &[&str] = &[
            "SELECT",
            "INSERT",
            "INTO",
            "VALUES",
            "(",
            ")",
            ",",
            ";",
            "'",
            "`",
            "\"",
            "\\",
            "1",
            "-",
            "@@",
            ".",
            "=",
            "*",
            "FROM",
            "WHERE",
            "t",
            "k",
            "CREATE",
            "TABLE",
            "BIGINT",
            "VARCHAR(3)",
            "PRIMARY KEY",
            "ENGINE=NDB",
            "/*",
            "*/",
            "--",
            "\n",
            "é",
            "NULL",
            "COUNT(*)",
            "LIMIT",
            " ",
        ];
        let mut x: u64 = 0x1234_5678;
        for _ in 0..20_000 {
            let mut q = String::new();
            x = crate::transporter::mix(x);
            for i in 0..(x % 12) {
                let r = crate::transporter::mix(x ^ i);
                q.push_str(PARTS[(r % PARTS.len() as u64) as usize]);
                if r & 1 == 0 {
                    q.push(' ');
                }
            }
            let _ = parse(&q);
        }
    }

    #[test]
    fn bad_input_is_a_mysql_error_not_a_panic() {
        let e = parse("SELEC 1").unwrap_err();
        assert_eq!(e.code, 1064);
        assert_eq!(e.state, "42000");
        assert!(e
            .message
            .starts_with("You have an error in your SQL syntax;"));
        assert!(e.message.ends_with("near 'SELEC 1' at line 1"), "{e}");
        let e = parse("SELECT v FROM t WHERE").unwrap_err();
        assert!(e.message.ends_with("near '' at line 1"), "{e}");
        assert_eq!(
            parse("INSERT INTO t VALUES (1, 'a') garbage")
                .unwrap_err()
                .message,
            SqlError::syntax("garbage").message
        );
        assert_eq!(parse("  ; ").unwrap_err().code, 1065);
        assert_eq!(parse("SELECT k").unwrap_err().code, 1054);
        assert_eq!(parse("DROP TABLE t").unwrap_err().code, 1235);
        for junk in [
            "'",
            "`",
            "\"abc",
            "/*",
            "SELECT 99999999999999999999",
            "SELECT 1.5",
            "(",
            "é",
            "SELECT @",
            "INSERT INTO t VALUES",
            "CREATE TABLE t (",
            "SELECT COUNT(*) FROM",
            "\u{0}",
            "SELECT 'a' 'b'",
            "USE",
            "SHOW",
            "DELETE FROM t WHERE k",
        ] {
            assert!(parse(junk).is_err(), "{junk:?} parsed");
        }
    }
}
