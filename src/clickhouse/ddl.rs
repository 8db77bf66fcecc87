//! The tables the sink writes, as DDL an 18.16 server accepts (String, Nullable(String),
//! UInt64; `ORDER BY` in the engine clause), created by the agent when missing and printed by
//! `check-config` for an operator to create by hand (or to adapt: a `Distributed` table over
//! a cluster, named `events`/`runs` in the database, works as the target, and the agent then
//! leaves it alone: it only creates what `EXISTS TABLE` says is missing).
//!
//! ReplacingMergeTree collapses rows with the same sorting key, keeping the greatest version:
//! `pos` for events (the record latest in stream order wins, as the SQLite upsert does), a
//! version that grows with every merge for runs; so a replay after a crash adds rows that
//! `SELECT ... FINAL` shows once.

use super::client::{Client, ClientError};

/// `CREATE DATABASE` and the two tables, in order, each idempotent.
pub(crate) fn statements(database: &str) -> [(Option<&'static str>, String); 3] {
    [
        (None, format!("CREATE DATABASE IF NOT EXISTS {database}")),
        (
            Some("events"),
            format!(
                "CREATE TABLE IF NOT EXISTS {database}.events (\n    \
                 host String,\n    run_id String,\n    event_key String,\n    \
                 event_type Nullable(String),\n    ts Nullable(String),\n    data String,\n    \
                 source String,\n    line_no UInt64,\n    pos UInt64\n\
                 ) ENGINE = ReplacingMergeTree(pos) ORDER BY (run_id, host, event_key)"
            ),
        ),
        (
            Some("runs"),
            format!(
                "CREATE TABLE IF NOT EXISTS {database}.runs (\n    \
                 host String,\n    run_id String,\n    status Nullable(String),\n    \
                 started_at Nullable(String),\n    ended_at Nullable(String),\n    \
                 data String,\n    version UInt64\n\
                 ) ENGINE = ReplacingMergeTree(version) ORDER BY (run_id, host)"
            ),
        ),
    ]
}

/// The DDL as a script (`check-config`).
pub(crate) fn script(database: &str) -> String {
    statements(database).iter().map(|(_, sql)| format!("{sql};\n")).collect()
}

/// Creates the database and tables that do not exist yet; an existing table (whatever its
/// engine) is used as it is. Returns the tables created.
pub(crate) fn ensure(client: &Client, database: &str) -> Result<Vec<&'static str>, ClientError> {
    let mut created = Vec::new();
    let db_exists =
        client.query(&format!("SELECT count() FROM system.databases WHERE name = '{database}'"))?;
    for (table, sql) in statements(database) {
        let exists = match table {
            None => db_exists.trim() == "1",
            Some(table) => client.query(&format!("EXISTS TABLE {database}.{table}"))?.trim() == "1",
        };
        if !exists {
            client.query(&sql)?;
            created.extend(table);
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_names_the_database_and_the_engines() {
        let script = super::script("telemetry");
        assert!(script.starts_with("CREATE DATABASE IF NOT EXISTS telemetry;\n"), "{script}");
        assert!(script.contains("CREATE TABLE IF NOT EXISTS telemetry.events ("), "{script}");
        assert!(
            script.contains("ENGINE = ReplacingMergeTree(pos) ORDER BY (run_id, host, event_key);"),
            "{script}"
        );
        assert!(
            script.contains("ENGINE = ReplacingMergeTree(version) ORDER BY (run_id, host);"),
            "{script}"
        );
    }
}
