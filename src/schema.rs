//! The shape of the run DBs' `events` table beyond its built-in columns: typed columns and
//! indexes from config (`[columns]`, `[[indexes]]`). Their names, their validation (errors
//! name the key), the SQL that defines them, and a scratch schema to check SQL fragments
//! against. No IO: applying them to a run DB is `sink::columns`.
//!
//! A typed column is a `VIRTUAL` generated column computed from `data`: adding one to a
//! filled table rewrites nothing. (SQLite still computes every generated column on each
//! INSERT, `sqlite3ComputeGeneratedColumns` in its insert.c, so each costs writes a JSON
//! lookup: measured with `examples/bench columns`.)
//! Its expression reads the value with `json_extract` (analysts' older `sqlite3` may lack
//! `->>`) only when `json_type` says it has the column's JSON type, so a value of another type
//! is NULL, never coerced (`CAST('oops' AS INTEGER)` is 0). A `real` column takes JSON
//! integers too (producers write `120` and `120.5` alike), as REAL; an `integer` column takes
//! no JSON real, not even `2.0`; booleans are no column type's.
//!
//! Index names are derived from their definition (`jss_<columns>_<hash>`), so applying is
//! idempotent (`CREATE INDEX IF NOT EXISTS`), and an index whose definition changes is a new
//! index: the old one stays in existing DBs (never dropped silently; `check-config` reports
//! it).

use std::fmt::Write as _;

use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// The built-in columns of `events` (`sink::run_db::MIGRATIONS`; a test there keeps them
/// equal), in table order.
pub(crate) const BUILTIN_COLUMNS: &[&str] =
    &["event_key", "run_id", "event_type", "ts", "data", "source", "line_no", "pos"];

/// Names that mean something else in an SQL expression unless a column takes them: the rowid
/// aliases and the boolean literals.
const RESERVED_NAMES: &[&str] = &["rowid", "oid", "_rowid_", "true", "false"];

/// Prefix of the indexes made from `[[indexes]]`: tells them apart from an analyst's own.
pub(crate) const INDEX_PREFIX: &str = "jss_";

/// SQLite's keywords (sqlite.org/lang_keywords.html, 3.50). Rejected as column names rather
/// than quoted: analysts, summaries and `where` fragments then use the names as written.
const SQL_KEYWORDS: &[&str] = &[
    "abort",
    "action",
    "add",
    "after",
    "all",
    "alter",
    "always",
    "analyze",
    "and",
    "as",
    "asc",
    "attach",
    "autoincrement",
    "before",
    "begin",
    "between",
    "by",
    "cascade",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "commit",
    "conflict",
    "constraint",
    "create",
    "cross",
    "current",
    "current_date",
    "current_time",
    "current_timestamp",
    "database",
    "default",
    "deferrable",
    "deferred",
    "delete",
    "desc",
    "detach",
    "distinct",
    "do",
    "drop",
    "each",
    "else",
    "end",
    "escape",
    "except",
    "exclude",
    "exclusive",
    "exists",
    "explain",
    "fail",
    "filter",
    "first",
    "following",
    "for",
    "foreign",
    "from",
    "full",
    "generated",
    "glob",
    "group",
    "groups",
    "having",
    "if",
    "ignore",
    "immediate",
    "in",
    "index",
    "indexed",
    "initially",
    "inner",
    "insert",
    "instead",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "key",
    "last",
    "left",
    "like",
    "limit",
    "match",
    "materialized",
    "natural",
    "no",
    "not",
    "nothing",
    "notnull",
    "null",
    "nulls",
    "of",
    "offset",
    "on",
    "or",
    "order",
    "others",
    "outer",
    "over",
    "partition",
    "plan",
    "pragma",
    "preceding",
    "primary",
    "query",
    "raise",
    "range",
    "recursive",
    "references",
    "regexp",
    "reindex",
    "release",
    "rename",
    "replace",
    "restrict",
    "returning",
    "right",
    "rollback",
    "row",
    "rows",
    "savepoint",
    "select",
    "set",
    "table",
    "temp",
    "temporary",
    "then",
    "ties",
    "to",
    "transaction",
    "trigger",
    "unbounded",
    "union",
    "unique",
    "update",
    "using",
    "vacuum",
    "values",
    "view",
    "virtual",
    "when",
    "where",
    "window",
    "with",
    "without",
];

/// `[columns]` and `[[indexes]]`: what `events` has beyond its built-in columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    /// In name order (as `[columns]` is a table, its order carries no meaning).
    pub columns: Vec<TypedColumn>,
    /// In config order.
    pub indexes: Vec<Index>,
}

/// One `[columns]` entry: `name = { path, type }`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedColumn {
    pub name: String,
    /// An SQLite JSON path into `data`, e.g. `$.metrics.ttfp_ms`.
    pub path: String,
    pub ty: ColumnType,
}

/// A typed column's type: its SQL type and the JSON types it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Real,
    Text,
}

/// One `[[indexes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    /// Built-in or typed column names, as configured.
    pub columns: Vec<String>,
    /// A partial index's condition (`where`), an SQL expression over `events`' columns.
    pub condition: Option<String>,
}

impl ColumnType {
    pub(crate) const ALL: [ColumnType; 3] =
        [ColumnType::Integer, ColumnType::Real, ColumnType::Text];

    /// The spelling in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Integer => "integer",
            ColumnType::Real => "real",
            ColumnType::Text => "text",
        }
    }

    /// The column's declared SQL type (which is also its affinity).
    pub(crate) fn sql_type(self) -> &'static str {
        match self {
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
            ColumnType::Text => "TEXT",
        }
    }
}

impl Schema {
    pub(crate) fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.indexes.is_empty()
    }

    /// The typed columns as `(name, SQL type)`, in table order: for exports and summaries.
    /// (A reader of a run DB gets the same from `PRAGMA table_xinfo(events)`: the columns
    /// whose `hidden` is 2.)
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "for export and summaries (issue 11), built beside this")
    )]
    pub(crate) fn typed_columns(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.columns.iter().map(|c| (c.name.as_str(), c.ty.sql_type()))
    }

    /// The typed column named `name` (case-insensitive, as SQL names are).
    pub(crate) fn column(&self, name: &str) -> Option<&TypedColumn> {
        self.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Checks every name, path, index column and `where` fragment. The error is the key
    /// (`columns.http_status.path`, `indexes[0].where`; array elements count from 0) and
    /// what is wrong with it.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        for (i, column) in self.columns.iter().enumerate() {
            let key = format!("columns.{}", column.name);
            check_name(&column.name).map_err(|message| (key.clone(), message))?;
            if let Some(other) =
                self.columns[..i].iter().find(|c| c.name.eq_ignore_ascii_case(&column.name))
            {
                let message =
                    format!("same column as columns.{} (SQL names ignore case)", other.name);
                return Err((key, message));
            }
            check_path(&column.path).map_err(|message| (format!("{key}.path"), message))?;
        }
        let scratch = scratch_db(&Schema { columns: self.columns.clone(), indexes: Vec::new() })
            .map_err(|e| ("columns".to_string(), format!("cannot define the columns: {e}")))?;
        for (i, index) in self.indexes.iter().enumerate() {
            let key = format!("indexes[{i}]");
            if index.columns.is_empty() {
                return Err((format!("{key}.columns"), "must list at least one column".into()));
            }
            for name in &index.columns {
                if !self.is_known_column(name) {
                    let message = format!(
                        "unknown column {name:?}: not a built-in column ({}) nor in [columns]",
                        BUILTIN_COLUMNS.join(", ")
                    );
                    return Err((format!("{key}.columns"), message));
                }
            }
            if let Some(condition) = &index.condition {
                if condition.trim().is_empty() {
                    let message = "must not be empty (leave it out for a full index)".into();
                    return Err((format!("{key}.where"), message));
                }
                if condition.contains('\0') {
                    return Err((format!("{key}.where"), "must not contain NUL".into()));
                }
            }
            if let Some(j) = self.indexes[..i].iter().position(|other| other.name() == index.name())
            {
                return Err((key, format!("same index as indexes[{j}]")));
            }
            // The very statement run DBs will run, so that what passes here cannot fail there
            // (a partial index's condition may not use subqueries or non-deterministic
            // functions, which a plain SELECT would allow). `prepare` takes one statement: a
            // fragment that smuggles in a second one fails.
            scratch
                .prepare(&index.create_sql())
                .and_then(|mut statement| statement.raw_execute())
                .map_err(|e| {
                    let key = if index.condition.is_some() { ".where" } else { ".columns" };
                    (format!("indexes[{i}]{key}"), sqlite_message(&e))
                })?;
        }
        Ok(())
    }

    fn is_known_column(&self, name: &str) -> bool {
        BUILTIN_COLUMNS.iter().any(|b| b.eq_ignore_ascii_case(name)) || self.column(name).is_some()
    }
}

impl TypedColumn {
    /// The SQL expression computing the column from `data`: the value at `path` when its JSON
    /// type is the column's, else NULL.
    pub(crate) fn expression(&self) -> String {
        let path = sql_string(&self.path);
        match self.ty {
            ColumnType::Integer => format!(
                "CASE WHEN json_type(data, {path}) = 'integer' THEN json_extract(data, {path}) END"
            ),
            ColumnType::Real => format!(
                "CASE WHEN json_type(data, {path}) IN ('integer', 'real') \
                 THEN CAST(json_extract(data, {path}) AS REAL) END"
            ),
            ColumnType::Text => format!(
                "CASE WHEN json_type(data, {path}) = 'text' THEN json_extract(data, {path}) END"
            ),
        }
    }

    /// The column definition as `ALTER TABLE events ADD COLUMN` takes it. SQLite keeps this
    /// text verbatim in the table's `sql` in `sqlite_master`, which is how a run DB tells
    /// whether it has this very definition (`sink::columns`).
    pub(crate) fn definition(&self) -> String {
        format!(
            "{} {} GENERATED ALWAYS AS ({}) VIRTUAL",
            quote(&self.name),
            self.ty.sql_type(),
            self.expression()
        )
    }
}

impl Index {
    /// `jss_<columns>_<8 hex digits of the SHA-256 of the definition>`: the same definition
    /// gives the same name in every DB and every version, another definition another name.
    pub(crate) fn name(&self) -> String {
        let columns: Vec<String> = self.columns.iter().map(|c| c.to_ascii_lowercase()).collect();
        let mut hasher = Sha256::new();
        hasher.update(columns.join(",").as_bytes());
        if let Some(condition) = &self.condition {
            hasher.update(b"\0where\0");
            hasher.update(condition.trim().as_bytes());
        }
        let digest = hasher.finalize();
        let mut name = format!("{INDEX_PREFIX}{}_", columns.join("_"));
        for byte in &digest[..4] {
            let _ = write!(name, "{byte:02x}");
        }
        name
    }

    pub(crate) fn create_sql(&self) -> String {
        let columns: Vec<String> = self.columns.iter().map(|c| quote(c)).collect();
        let mut sql = format!(
            "CREATE INDEX IF NOT EXISTS {} ON events ({})",
            quote(&self.name()),
            columns.join(", ")
        );
        if let Some(condition) = &self.condition {
            // On a line of its own: a trailing `--` comment in the fragment ends there.
            let _ = writeln!(sql, " WHERE {}", condition.trim());
        }
        sql
    }

    /// Whether the index depends on the typed column `name`: lists it, or its condition
    /// mentions it (a whole word, any case; a string literal that happens to contain the
    /// word counts too, which only costs a rebuild).
    pub(crate) fn uses(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.eq_ignore_ascii_case(name))
            || self.condition.as_deref().is_some_and(|c| mentions(c, name))
    }
}

/// An in-memory DB with an empty `events` table (built-in and typed columns) and the
/// schema's indexes: `where` fragments of indexes and summaries are prepared against it, so
/// that a bad one is a config error instead of a failure in every run DB.
pub(crate) fn scratch_db(schema: &Schema) -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    let mut sql = format!("CREATE TABLE events ({}", BUILTIN_COLUMNS.join(", "));
    for column in &schema.columns {
        let _ = write!(sql, ", {}", column.definition());
    }
    sql.push_str(");\n");
    conn.execute_batch(&sql)?;
    for index in &schema.indexes {
        conn.prepare(&index.create_sql())?.raw_execute()?;
    }
    Ok(conn)
}

/// Whether `sql` mentions the identifier `name` as a whole word, in any case.
pub(crate) fn mentions(sql: &str, name: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let sql = sql.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    sql.match_indices(&name).any(|(at, _)| {
        let before = sql[..at].chars().next_back();
        let after = sql[at + name.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// `name` in double quotes (SQL identifier quoting). Validated names need none, but the DDL
/// stays correct whatever a future rule lets through.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal.
fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A column name must be a plain SQL identifier that means nothing else in an expression.
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not an SQL identifier (an ASCII letter or _, then letters, digits or _)"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(builtin) = BUILTIN_COLUMNS.iter().find(|b| **b == lower) {
        return Err(format!("{name:?} is a built-in column of events ({builtin})"));
    }
    if RESERVED_NAMES.contains(&lower.as_str()) {
        return Err(format!("{name:?} already means something in SQL; pick another name"));
    }
    if SQL_KEYWORDS.contains(&lower.as_str()) {
        return Err(format!("{name:?} is an SQL keyword; pick another name (e.g. {lower}_)"));
    }
    Ok(())
}

/// A JSON path SQLite accepts, below `$` (the whole line is never of a column's type).
///
/// Parsed here because SQLite checks a path only as far as the document it reads goes
/// (`json_type('{}', '$.a[')` is NULL, not an error): SQLite's grammar (`jsonLookupStep`) is
/// `$` then steps `.key` (up to the next `.` or `[`), `."key"` (up to the next `"`), `[N]`,
/// `[#]` or `[#-N]`.
fn check_path(path: &str) -> Result<(), String> {
    let bad = |at: usize, what: &str| {
        Err(format!("{path:?} is not a valid JSON path: at byte {at}: expected {what}"))
    };
    let Some(mut rest) = path.strip_prefix('$') else {
        return Err(format!(
            "{path:?} is not a JSON path (e.g. \"$.status\"): it must start with $"
        ));
    };
    if rest.is_empty() {
        return Err(format!("{path:?} is the whole line, never one value: name a field below $"));
    }
    if path.contains('\0') {
        return Err("must not contain NUL".into());
    }
    while !rest.is_empty() {
        let at = path.len() - rest.len();
        if let Some(after) = rest.strip_prefix(".\"") {
            let Some(end) = after.find('"') else { return bad(at + 2, "a closing \"") };
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return bad(at + 1, "a key after .");
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let digits =
                |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let n = match after.strip_prefix("#-") {
                Some(tail) if digits(tail) > 0 => 2 + digits(tail),
                _ if after.starts_with('#') => 1,
                _ => digits(after),
            };
            if n == 0 || !after[n..].starts_with(']') {
                return bad(at, "[N], [#] or [#-N]");
            }
            rest = &after[n + 1..];
        } else {
            return bad(at, ". or [");
        }
    }
    Ok(())
}

/// SQLite's own message, without rusqlite's wrapping.
fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value;

    fn column(name: &str, path: &str, ty: ColumnType) -> TypedColumn {
        TypedColumn { name: name.into(), path: path.into(), ty }
    }

    fn index(columns: &[&str], condition: Option<&str>) -> Index {
        Index {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            condition: condition.map(Into::into),
        }
    }

    fn sample() -> Schema {
        Schema {
            columns: vec![
                column("http_status", "$.status", ColumnType::Integer),
                column("ttfp_ms", "$.metrics.ttfp_ms", ColumnType::Real),
            ],
            indexes: vec![index(&["event_type", "http_status"], Some("http_status >= 400"))],
        }
    }

    #[track_caller]
    fn check_name_case(name: &str, want: Option<&str>) {
        match (check_name(name), want) {
            (Ok(()), None) => {}
            (Err(got), Some(want)) => assert!(got.contains(want), "{name:?}: {got}"),
            (got, want) => panic!("{name:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn names() {
        for ok in ["http_status", "_x", "X9", "Status_Code", "ttfp_ms", "rows_x", "sqlite_x"] {
            check_name_case(ok, None);
        }
        let not_identifier = Some("is not an SQL identifier");
        for bad in ["", "9x", "http-status", "a b", "é", "x.y", "\"x\"", "x;"] {
            check_name_case(bad, not_identifier);
        }
        check_name_case("DATA", Some("\"DATA\" is a built-in column of events (data)"));
        check_name_case("line_no", Some("is a built-in column"));
        check_name_case("rowid", Some("already means something in SQL"));
        check_name_case("True", Some("already means something in SQL"));
        check_name_case(
            "offset",
            Some("\"offset\" is an SQL keyword; pick another name (e.g. offset_)"),
        );
        check_name_case("Select", Some("is an SQL keyword"));
        assert_eq!(SQL_KEYWORDS.len(), 147);
    }

    #[track_caller]
    fn check_path_case(path: &str, want: Option<&str>) {
        match (check_path(path), want) {
            (Ok(()), None) => {}
            (Err(got), Some(want)) => assert!(got.contains(want), "{path:?}: {got}"),
            (got, want) => panic!("{path:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn paths() {
        for ok in
            ["$.a", "$.a.b", "$.a[0]", "$.a[#-1]", "$.a[#]", "$.\"a b\"", "$.\"it's\"", "$[0]"]
        {
            check_path_case(ok, None);
        }
        check_path_case(
            "$",
            Some("\"$\" is the whole line, never one value: name a field below $"),
        );
        check_path_case(
            "status",
            Some("\"status\" is not a JSON path (e.g. \"$.status\"): it must start with $"),
        );
        check_path_case("", Some("it must start with $"));
        check_path_case(
            "$.a[",
            Some("\"$.a[\" is not a valid JSON path: at byte 3: expected [N], [#] or [#-N]"),
        );
        check_path_case("$.a[x]", Some("at byte 3: expected [N], [#] or [#-N]"));
        check_path_case("$.a[#-]", Some("at byte 3: expected [N], [#] or [#-N]"));
        check_path_case("$.a[1", Some("at byte 3: expected [N], [#] or [#-N]"));
        check_path_case("$..a", Some("at byte 2: expected a key after ."));
        check_path_case("$.a.", Some("at byte 4: expected a key after ."));
        check_path_case("$a", Some("at byte 1: expected . or ["));
        check_path_case("$.\"a", Some("at byte 3: expected a closing \""));
        check_path_case("$.a\0", Some("must not contain NUL"));
        // What passes is what SQLite reads: each of these finds its value.
        let conn = Connection::open_in_memory().unwrap();
        for (path, doc) in [
            ("$.a.b", r#"{"a":{"b":7}}"#),
            ("$.a[1]", r#"{"a":[0,7]}"#),
            ("$.a[#-1]", r#"{"a":[0,7]}"#),
            ("$.\"a.b\".c", r#"{"a.b":{"c":7}}"#),
            ("$.x y", r#"{"x y":7}"#),
            ("$[1].a", r#"[0,{"a":7}]"#),
        ] {
            check_path_case(path, None);
            let got: i64 =
                conn.query_row("SELECT json_extract(?1, ?2)", [doc, path], |r| r.get(0)).unwrap();
            assert_eq!(got, 7, "{path}");
        }
    }

    /// The value each type of column computes from each kind of JSON value: the value when its
    /// JSON type is the column's (integers count for `real`), NULL otherwise, never a coerced
    /// number.
    #[test]
    fn expressions_type_or_null() {
        use ColumnType::*;
        let (int, real, text) = (Value::Integer, Value::Real, |s: &str| Value::Text(s.into()));
        #[rustfmt::skip]
        let cases: &[(&str, ColumnType, Value)] = &[
            (r#"{"v": 200}"#, Integer, int(200)),
            (r#"{"v": -9007199254740993}"#, Integer, int(-9007199254740993)),
            // Beyond 64 bits SQLite's JSON reader gives a REAL, which stays one (documented).
            (r#"{"v": 123456789012345678901234567890}"#, Integer, real(1.2345678901234568e29)),
            (r#"{"v": "200"}"#, Integer, Value::Null),
            (r#"{"v": "oops"}"#, Integer, Value::Null),
            (r#"{"v": 2.0}"#, Integer, Value::Null),
            (r#"{"v": 2.5}"#, Integer, Value::Null),
            (r#"{"v": true}"#, Integer, Value::Null),
            (r#"{"v": null}"#, Integer, Value::Null),
            (r#"{"v": [1]}"#, Integer, Value::Null),
            (r#"{"w": 1}"#, Integer, Value::Null),
            (r#"{"v": 1.5}"#, Real, real(1.5)),
            (r#"{"v": 120}"#, Real, real(120.0)),
            (r#"{"v": 1e3}"#, Real, real(1000.0)),
            (r#"{"v": "1.5"}"#, Real, Value::Null),
            (r#"{"v": false}"#, Real, Value::Null),
            (r#"{"v": {"x": 1}}"#, Real, Value::Null),
            (r#"{"v": "fallback"}"#, Text, text("fallback")),
            (r#"{"v": "it's \"q\""}"#, Text, text("it's \"q\"")),
            (r#"{"v": ""}"#, Text, text("")),
            (r#"{"v": 5}"#, Text, Value::Null),
            (r#"{"v": {"x": "y"}}"#, Text, Value::Null),
            (r#"{"v": ["a"]}"#, Text, Value::Null),
            (r#"{"v": null}"#, Text, Value::Null),
        ];
        let conn = Connection::open_in_memory().unwrap();
        for (data, ty, want) in cases {
            let sql =
                format!("SELECT {} FROM (SELECT ?1 AS data)", column("v", "$.v", *ty).expression());
            let got: Value = conn.query_row(&sql, [data], |r| r.get(0)).unwrap();
            assert_eq!(&got, want, "{data} as {}", ty.as_str());
        }
    }

    /// Paths are string literals in the DDL: a quote in a key stays a quote.
    #[test]
    fn a_quote_in_a_path_is_escaped() {
        let schema =
            Schema { columns: vec![column("q", "$.\"it's\"", ColumnType::Text)], indexes: vec![] };
        schema.validate().unwrap();
        let conn = scratch_db(&schema).unwrap();
        conn.execute("INSERT INTO events (data) VALUES (?1)", [r#"{"it's": "yes"}"#]).unwrap();
        let got: String = conn.query_row("SELECT q FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(got, "yes");
    }

    #[test]
    fn index_names_follow_the_definition() {
        let a = index(&["event_type", "http_status"], Some("http_status >= 400"));
        assert_eq!(
            a.name(),
            index(&["EVENT_TYPE", "Http_Status"], Some(" http_status >= 400 ")).name()
        );
        assert!(a.name().starts_with("jss_event_type_http_status_"), "{}", a.name());
        assert_eq!(a.name().len(), "jss_event_type_http_status_".len() + 8);
        assert_ne!(a.name(), index(&["event_type", "http_status"], None).name());
        assert_ne!(
            a.name(),
            index(&["http_status", "event_type"], Some("http_status >= 400")).name()
        );
        assert_ne!(
            a.name(),
            index(&["event_type", "http_status"], Some("http_status > 400")).name()
        );
        // Pinned: a name that changed between versions would build every index again.
        assert_eq!(
            index(&["ts"], None).name(),
            "jss_ts_".to_string()
                + &{
                    let digest = Sha256::digest(b"ts");
                    digest[..4].iter().map(|b| format!("{b:02x}")).collect::<String>()
                }
        );
    }

    #[test]
    fn uses() {
        let i = index(&["event_type"], Some("HTTP_STATUS >= 400 AND ttfp_ms_x > 1"));
        assert!(i.uses("http_status"));
        assert!(i.uses("Event_Type"));
        assert!(!i.uses("ttfp_ms"));
        assert!(!i.uses("status"));
        assert!(mentions("a=1 and b", "b") && mentions("(b)", "B") && !mentions("ab", "b"));
    }

    #[track_caller]
    fn check_invalid(edit: impl FnOnce(&mut Schema), want_key: &str, want: &str) {
        let mut schema = sample();
        edit(&mut schema);
        match schema.validate() {
            Ok(()) => panic!("valid, expected {want_key}: {want}"),
            Err((key, message)) => {
                assert_eq!(key, want_key, "{message}");
                assert!(message.contains(want), "{key}: {message}\n want: {want}");
            }
        }
    }

    #[test]
    fn validation_names_the_key() {
        sample().validate().unwrap();
        Schema::default().validate().unwrap();
        check_invalid(
            |s| s.columns.push(column("Http_Status", "$.x", ColumnType::Text)),
            "columns.Http_Status",
            "same column as columns.http_status (SQL names ignore case)",
        );
        check_invalid(
            |s| s.columns[1].name = "run_id".into(),
            "columns.run_id",
            "is a built-in column",
        );
        check_invalid(
            |s| s.columns[0].path = "$.a[".into(),
            "columns.http_status.path",
            "not a valid JSON path",
        );
        check_invalid(
            |s| s.indexes[0].columns.clear(),
            "indexes[0].columns",
            "at least one column",
        );
        check_invalid(
            |s| s.indexes.push(index(&["ts", "nope"], None)),
            "indexes[1].columns",
            "unknown column \"nope\": not a built-in column (event_key, run_id",
        );
        check_invalid(
            |s| s.indexes[0].condition = Some(" ".into()),
            "indexes[0].where",
            "must not be empty",
        );
        check_invalid(
            |s| s.indexes[0].condition = Some("http_status >=".into()),
            "indexes[0].where",
            "incomplete input",
        );
        check_invalid(
            |s| s.indexes[0].condition = Some("nope > 1".into()),
            "indexes[0].where",
            "no such column: nope",
        );
        check_invalid(
            |s| s.indexes[0].condition = Some("random() > 0".into()),
            "indexes[0].where",
            "non-deterministic functions prohibited in partial index WHERE clauses",
        );
        check_invalid(
            |s| s.indexes[0].condition = Some("ts IN (SELECT 1)".into()),
            "indexes[0].where",
            "subqueries prohibited",
        );
        check_invalid(
            |s| s.indexes[0].condition = Some("1; DROP TABLE events".into()),
            "indexes[0].where",
            "",
        );
        check_invalid(
            |s| s.indexes.push(index(&["EVENT_TYPE", "http_status"], Some("http_status >= 400"))),
            "indexes[1]",
            "same index as indexes[0]",
        );
        // A trailing comment cannot swallow anything: the fragment ends the statement.
        let mut commented = sample();
        commented.indexes[0].condition = Some("http_status >= 400 -- client errors".into());
        commented.validate().unwrap();
    }

    #[test]
    fn typed_columns_and_the_scratch_schema() {
        let schema = sample();
        let typed: Vec<_> = schema.typed_columns().collect();
        assert_eq!(typed, [("http_status", "INTEGER"), ("ttfp_ms", "REAL")]);
        let conn = scratch_db(&schema).unwrap();
        let hidden: Vec<(String, i64)> = conn
            .prepare("SELECT name, hidden FROM pragma_table_xinfo('events') WHERE hidden <> 0")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(hidden, [("http_status".to_string(), 2), ("ttfp_ms".to_string(), 2)]);
        conn.prepare("SELECT count(*) FROM events WHERE event_type = 'x' AND ttfp_ms > 1").unwrap();
    }
}
