//! The `runs.data` merge: run records of a run are folded in stream order into one JSON object.
//!
//! The contract says `data` is all run-record fields merged with json_patch (RFC 7396, later
//! wins per key), except that a terminal status (anything but `"running"`) is never replaced by
//! `"running"`: a heartbeat that arrives after the end record must not resurrect the run.
//! Doing the merge in Rust (rather than `json_patch()` in SQL) keeps that exception in one place
//! and lets a batch fold several records before touching the database.

use serde_json::{Map, Value};

/// RFC 7396 JSON merge patch (what SQLite's json_patch does): objects merge recursively, null deletes the key, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => merge_object(target, patch, None),
        _ => *target = patch.clone(),
    }
}

/// Folds one run record (a JSON object) into the merged run state, keeping the contract's rule that a terminal status (anything but "running") is never replaced by "running": if `state[status_key]` is terminal (present, not "running") and `record[status_key]` is "running" or null, the record's status key is ignored (other keys still merge).
///
/// A null status over a terminal one is ignored too: deleting the key would leave no status,
/// and a later "running" would then replace the terminal status through that gap. So once a
/// run is terminal it stays terminal; another terminal status still replaces it.
///
/// A record that is not an object is ignored: `state` must stay an object (`runs.data` is one),
/// and callers only pass objects (non-objects are dead-lettered as `not_object` upstream).
pub(crate) fn fold_run_record(state: &mut Value, record: &Value, status_key: &str) {
    let Value::Object(record) = record else {
        return;
    };
    let terminal =
        matches!(state.get(status_key), Some(v) if !v.is_null() && v.as_str() != Some("running"));
    let keeps_terminal = terminal
        && matches!(record.get(status_key), Some(v) if v.is_null() || v.as_str() == Some("running"));
    merge_object(target_or_new(state), record, keeps_terminal.then_some(status_key));
}

/// RFC 7396 `MergePatch` for an object patch, optionally skipping one top-level key.
fn merge_object(target: &mut Value, patch: &Map<String, Value>, skip: Option<&str>) {
    let target = target_or_new(target);
    let Value::Object(map) = target else {
        unreachable!("target_or_new returns an object");
    };
    for (key, value) in patch {
        if Some(key.as_str()) == skip {
            continue;
        }
        if value.is_null() {
            map.remove(key);
        } else {
            // A new key starts as null so a nested object patch is applied to `{}`, which
            // drops its nested nulls exactly as the RFC's recursion does.
            merge_patch(map.entry(key.as_str()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 7396: an object patch applied to a non-object target starts from `{}`.
fn target_or_new(target: &mut Value) -> &mut Value {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check_patch(target: Value, patch: Value, expected: Value) {
        let mut t = target.clone();
        merge_patch(&mut t, &patch);
        assert_eq!(t, expected, "target {target}, patch {patch}");
    }

    /// Every example of RFC 7396 Appendix A, plus the example of section 3.
    #[test]
    fn rfc7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (json!({"a":{"b":"c"}}), json!({"a":{"b":"d","c":null}}), json!({"a":{"b":"d"}})),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
            (
                json!({"title":"Goodbye!","author":{"givenName":"John","familyName":"Doe"},
                       "tags":["example","sample"],"content":"This will be unchanged"}),
                json!({"title":"Hello!","phoneNumber":"+01-123-456-7890",
                       "author":{"familyName":null},"tags":["example"]}),
                json!({"title":"Hello!","author":{"givenName":"John"},"tags":["example"],
                       "content":"This will be unchanged","phoneNumber":"+01-123-456-7890"}),
            ),
        ];
        for (target, patch, expected) in cases {
            check_patch(target, patch, expected);
        }
    }

    /// Folds `records` in order from `{}` with status key "status".
    #[track_caller]
    fn check_fold(records: &[Value], expected: Value) {
        let mut state = json!({});
        for r in records {
            fold_run_record(&mut state, r, "status");
        }
        assert_eq!(state, expected);
    }

    #[test]
    fn fold_cases() {
        let start = json!({"run_id":"r","record_type":"run","status":"running","start_time":1});
        let end = json!({"run_id":"r","record_type":"run","status":"finished","end_time":9});
        let beat = json!({"run_id":"r","record_type":"run","status":"running","hb":10});
        let base = json!({"run_id":"r","record_type":"run","start_time":1,"end_time":9});

        // A late heartbeat keeps the terminal status but still merges its other keys.
        let mut late = base.clone();
        late["status"] = json!("finished");
        late["hb"] = json!(10);
        check_fold(&[start.clone(), end.clone(), beat.clone()], late);

        // Terminal replaces terminal: later wins.
        let failed = json!({"status":"failed"});
        let mut after = base.clone();
        after["status"] = json!("failed");
        check_fold(&[start.clone(), end.clone(), failed], after);

        // running → running is an ordinary replacement.
        check_fold(
            &[json!({"status":"running","n":1}), json!({"status":"running","n":2})],
            json!({"status":"running","n":2}),
        );

        // A record without the status key keeps the current one.
        check_fold(
            &[end.clone(), json!({"metrics":{"loss":0.1}})],
            json!({"run_id":"r","record_type":"run","status":"finished","end_time":9,
                   "metrics":{"loss":0.1}}),
        );

        // Nested objects merge; null deletes (nested and top-level).
        check_fold(
            &[
                json!({"cfg":{"lr":0.1,"opt":{"name":"sgd","m":0.9}},"tmp":1}),
                json!({"cfg":{"opt":{"m":null,"wd":0.01},"bs":32},"tmp":null}),
            ],
            json!({"cfg":{"lr":0.1,"opt":{"name":"sgd","wd":0.01},"bs":32}}),
        );

        // Any non-"running" status is terminal, whatever its JSON type.
        check_fold(&[json!({"status":3}), json!({"status":"running"})], json!({"status":3}));

        // The status key is configurable.
        let mut state = json!({});
        fold_run_record(&mut state, &json!({"state":"done"}), "state");
        fold_run_record(&mut state, &json!({"state":"running","x":1}), "state");
        assert_eq!(state, json!({"state":"done","x":1}));

        // A non-object record leaves the state alone.
        check_fold(&[end.clone(), json!([1]), json!("x")], end);
    }

    /// Issue 10 #4: a null status cannot clear a terminal status, or a later "running" would
    /// replace it through the gap; a null still clears "running", and a terminal status is
    /// still replaced by another terminal one.
    #[test]
    fn null_status_does_not_open_a_terminal_status_to_running() {
        check_fold(
            &[
                json!({"status":"finished"}),
                json!({"status":null,"n":1}),
                json!({"status":"running"}),
            ],
            json!({"status":"finished","n":1}),
        );
        check_fold(
            &[json!({"status":"failed"}), json!({"status":null})],
            json!({"status":"failed"}),
        );
        check_fold(&[json!({"status":"running","n":1}), json!({"status":null})], json!({"n":1}));
        check_fold(
            &[json!({"status":"finished"}), json!({"status":null}), json!({"status":"failed"})],
            json!({"status":"failed"}),
        );
    }
}
