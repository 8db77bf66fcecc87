//! Which runs an export covers, and their catalog rows.
//!
//! `--since/--until` select the catalog's runs by the UTC day they started: `started_at`, or
//! `first_ts` when `started_at` is missing or not a date SQLite's `date()` reads (ISO 8601 /
//! RFC 3339 text; an offset is converted to UTC). A run is filed under the day it started
//! whenever it is exported, so weekly exports partition the runs; runs with neither date are
//! never selected by date (counted, and named by `--run`).
//!
//! The catalog is read with a small query of this module's own (read-only, `query_only`).
// The catalog is read here with a query of its own rather than through `catalog::Catalog`: the
// runs file needs the values as SQLite stores them (typed), the catalog's API gives text. The
// columns and their order are the contract's, which both follow.

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use super::read::{open_read_only, quoted};
use super::write::{Column, Kind};

/// The catalog's `runs` columns exported to `runs.<ext>`, in order, with their kinds when the
/// catalog declares none (otherwise its declared types decide).
pub(crate) const CATALOG_COLUMNS: &[(&str, Kind)] = &[
    ("run_id", Kind::Text),
    ("db_path", Kind::Text),
    ("status", Kind::Text),
    ("started_at", Kind::Text),
    ("ended_at", Kind::Text),
    ("events", Kind::Integer),
    ("first_ts", Kind::Text),
    ("last_ts", Kind::Text),
    ("db_bytes", Kind::Integer),
    ("last_write_at", Kind::Text),
    ("summary", Kind::Json),
];

/// The UTC day a catalog row started, as SQL over its columns.
const START_DAY: &str = "coalesce(
    date(CASE WHEN typeof(started_at) = 'text' THEN started_at END),
    date(CASE WHEN typeof(first_ts) = 'text' THEN first_ts END))";

/// Checks a `YYYY-MM-DD` day (a real calendar date); returns it as given.
pub(crate) fn parse_day(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not a date as YYYY-MM-DD");
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts[..] else { return Err(bad()) };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let number = |s: &str| s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse::<u32>().ok())?;
    let (Some(y), Some(m), Some(d)) = (number(y), number(m), number(d)) else { return Err(bad()) };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if d == 0 || d > days {
        return Err(bad());
    }
    Ok(text.to_string())
}

/// The columns of `runs.<ext>` without a catalog.
pub(crate) fn default_columns() -> Vec<Column> {
    CATALOG_COLUMNS.iter().map(|&(name, kind)| Column::new(name, kind)).collect()
}

#[derive(Debug, thiserror::Error)]
#[error("catalog {}: {source}", path.display())]
pub(crate) struct CatalogError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// The catalog, open read-only.
pub(crate) struct Catalog {
    conn: Connection,
    path: PathBuf,
    columns: Vec<Column>,
}

impl Catalog {
    /// Opens the catalog at `path`; `None` if there is no such file.
    pub(crate) fn open(path: &Path) -> Result<Option<Catalog>, CatalogError> {
        if !path.exists() {
            return Ok(None);
        }
        let error = |source| CatalogError { path: path.to_path_buf(), source };
        let conn = open_read_only(path).map_err(error)?;
        let declared: Vec<(String, String)> = conn
            .prepare("SELECT name, type FROM pragma_table_info('runs')")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()
            })
            .map_err(error)?;
        let columns = CATALOG_COLUMNS
            .iter()
            .map(|&(name, default)| {
                let declared = declared.iter().find(|(n, _)| n == name);
                let kind = match declared.and_then(|(_, t)| Kind::of_declared(t)) {
                    Some(Kind::Text) | None => default,
                    Some(kind) => kind,
                };
                Column::new(name, kind)
            })
            .collect();
        Ok(Some(Catalog { conn, path: path.to_path_buf(), columns }))
    }

    /// The columns of `runs.<ext>`: [`CATALOG_COLUMNS`] with the catalog's declared types.
    pub(crate) fn columns(&self) -> &[Column] {
        &self.columns
    }

    fn select(&self) -> String {
        let names: Vec<String> = CATALOG_COLUMNS.iter().map(|(n, _)| quoted(n)).collect();
        format!("SELECT {} FROM runs", names.join(", "))
    }

    fn error(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError { path: self.path.clone(), source }
    }

    /// The row of `run_id`, if the catalog has one.
    pub(crate) fn row(&self, run_id: &str) -> Result<Option<Vec<Value>>, CatalogError> {
        let sql = format!("{} WHERE run_id = ?1", self.select());
        self.conn.query_row(&sql, [run_id], row_values).optional().map_err(|e| self.error(e))
    }

    /// The rows of the runs that started between `since` and `until` (UTC days, both
    /// included; `until` None: no end), by day and run_id.
    pub(crate) fn started_between(
        &self,
        since: &str,
        until: Option<&str>,
    ) -> Result<Vec<(String, Vec<Value>)>, CatalogError> {
        let sql = format!(
            "{} WHERE {START_DAY} BETWEEN ?1 AND ?2 ORDER BY {START_DAY}, run_id",
            self.select()
        );
        let until = until.unwrap_or("9999-12-31");
        let run = || -> rusqlite::Result<Vec<(String, Vec<Value>)>> {
            let mut statement = self.conn.prepare(&sql)?;
            let rows = statement.query_map([since, until], row_values)?;
            rows.map(|row| {
                let row = row?;
                let run_id = match &row[0] {
                    Value::Text(t) => t.clone(),
                    Value::Integer(i) => i.to_string(),
                    other => format!("{other:?}"),
                };
                Ok((run_id, row))
            })
            .collect()
        };
        run().map_err(|e| self.error(e))
    }

    /// How many runs have no start day (neither date readable): `--since` never selects them.
    pub(crate) fn undated(&self) -> Result<u64, CatalogError> {
        let sql = format!("SELECT count(*) FROM runs WHERE {START_DAY} IS NULL");
        self.conn.query_row(&sql, [], |r| r.get(0)).map_err(|e| self.error(e))
    }
}

fn row_values(row: &rusqlite::Row<'_>) -> rusqlite::Result<Vec<Value>> {
    (0..CATALOG_COLUMNS.len()).map(|idx| row.get::<_, Value>(idx)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_checked_against_the_calendar() {
        for good in ["2024-03-01", "2024-02-29", "2000-02-29", "1999-12-31"] {
            assert_eq!(parse_day(good).as_deref(), Ok(good));
        }
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "2024-3-1",
            "24-03-01",
            "2024-03-01T00:00:00Z",
            "2024/03/01",
            "",
            "2024-03-+1",
            "yyyy-mm-dd",
        ] {
            assert!(parse_day(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// A catalog by the contract's schema: runs are selected by the UTC day they started,
    /// `first_ts` standing in for a missing or unreadable `started_at`.
    #[test]
    fn runs_are_selected_by_their_utc_start_day() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, db_path TEXT, status TEXT,
                 started_at TEXT, ended_at TEXT, events INTEGER, first_ts TEXT, last_ts TEXT,
                 db_bytes INTEGER, last_write_at INTEGER, summary TEXT);
             INSERT INTO runs (run_id, started_at, first_ts) VALUES
                 ('feb-29', '2024-02-29T23:59:59Z', NULL),
                 ('mar-1-offset', '2024-02-29T20:00:00-05:00', NULL),
                 ('mar-1', '2024-03-01T00:00:00Z', '2024-02-01T00:00:00Z'),
                 ('mar-2-by-ts', NULL, '2024-03-02T10:00:00.5Z'),
                 ('mar-3-bad-start', 'yesterday', '2024-03-03 08:00:00'),
                 ('undated', NULL, 1709251200),
                 ('mar-4', '2024-03-04', NULL);",
        )
        .unwrap();
        drop(conn);
        let catalog = Catalog::open(&path).unwrap().unwrap();
        let ids = |since, until| -> Vec<String> {
            catalog.started_between(since, until).unwrap().into_iter().map(|(id, _)| id).collect()
        };
        assert_eq!(
            ids("2024-03-01", Some("2024-03-03")),
            ["mar-1", "mar-1-offset", "mar-2-by-ts", "mar-3-bad-start"]
        );
        assert_eq!(ids("2024-03-03", None), ["mar-3-bad-start", "mar-4"]);
        assert_eq!(ids("2024-02-29", Some("2024-02-29")), ["feb-29"]);
        assert_eq!(catalog.undated().unwrap(), 1);
        let kinds: Vec<Kind> = catalog.columns().iter().map(|c| c.kind).collect();
        use Kind::*;
        assert_eq!(
            kinds,
            [Text, Text, Text, Text, Text, Integer, Text, Text, Integer, Integer, Json]
        );
        assert_eq!(catalog.row("mar-4").unwrap().unwrap()[3], Value::Text("2024-03-04".into()));
        assert_eq!(catalog.row("nope").unwrap(), None);
        assert!(Catalog::open(&dir.path().join("none.sqlite")).unwrap().is_none());
    }
}
