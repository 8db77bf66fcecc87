# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_jsonl_shipper_global_optspecs
    string join \n h/help V/version
end

function __fish_jsonl_shipper_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_jsonl_shipper_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_jsonl_shipper_using_subcommand
    set -l cmd (__fish_jsonl_shipper_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "run" -d 'Run the daemon in the foreground (SIGTERM/SIGINT drain and exit 0; SIGHUP reloads)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "backfill" -d 'Ship historic files to their end and exit (resumable; safe while the daemon runs)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "status" -d 'Show per-file progress, run DBs and dead letters'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "check-config" -d 'Validate the configuration and print the effective config'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "maintain" -d 'One-off upkeep for cron or an operator: retention now, WAL checkpoint (TRUNCATE) and PRAGMA optimize of every run DB, optionally VACUUM'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "catalog" -d 'The run catalog (output.catalog): one row per run DB'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "export" -d 'Export runs\' events to Parquet, NDJSON or CSV: DIR/<run>.<ext> per run plus DIR/runs.<ext> (their catalog rows). Reads the run DBs read-only; safe while the daemon runs. Exit 2 when a --run has no run DB (nothing is written); exit 1 when a run selected from the catalog could not be read (the others are exported)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "dlq" -d 'Inspect or replay the dead-letter queue'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "summary" -d 'Print a run\'s summary: the built-in metrics and the configured [[summary]] ones (the stored summary if current, else computed and stored)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "slo" -d 'The SLO gate: judge the configured [[slo]] on a run, or on the N most recently ended runs. Exit 0 when every SLO holds, 1 when any fails or its metric is missing'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand run" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand run" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand run" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand run" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand run" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -s j -l jobs -d 'Files read in parallel' -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -l run -d 'With --from-start: ship only this run\'s records' -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -l from-start -d 'Read every file from its start, ignoring and leaving alone the checkpoints and the DLQ: rebuilds run DBs (e.g. one quarantined as corrupt) while the sources exist'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand backfill" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand status" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand status" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand status" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand status" -l json -d 'Machine-readable output'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand status" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand status" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand check-config" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand check-config" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand check-config" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand check-config" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand maintain" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand maintain" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand maintain" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand maintain" -l vacuum -d 'Also VACUUM every run DB (rewrites each file; needs free space as large as it)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand maintain" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand maintain" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and not __fish_seen_subcommand_from rebuild help" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and not __fish_seen_subcommand_from rebuild help" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and not __fish_seen_subcommand_from rebuild help" -f -a "rebuild" -d 'Recreate the catalog from the run DBs (read-only; safe while the daemon runs)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and not __fish_seen_subcommand_from rebuild help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and __fish_seen_subcommand_from rebuild" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and __fish_seen_subcommand_from rebuild" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and __fish_seen_subcommand_from rebuild" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and __fish_seen_subcommand_from rebuild" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and __fish_seen_subcommand_from rebuild" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and __fish_seen_subcommand_from help" -f -a "rebuild" -d 'Recreate the catalog from the run DBs (read-only; safe while the daemon runs)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand catalog; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l run -d 'A run to export (repeat for several)' -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l since -d 'The catalog\'s runs that started on or after this UTC day (started_at, else first_ts)' -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l until -d '... and on or before this UTC day (inclusive; default: no end)' -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l format -r -f -a "parquet\t'Apache Parquet, ZSTD-compressed, typed columns (the default)'
ndjson\t'One JSON object per line; `data` embedded as a JSON value'
csv\t'RFC 4180 CSV with a header row; NULL is an empty field, an empty string `""`'"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -l out -d 'Directory to write into (created if missing); files of an earlier export are replaced' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand export" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and not __fish_seen_subcommand_from list replay help" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and not __fish_seen_subcommand_from list replay help" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and not __fish_seen_subcommand_from list replay help" -f -a "list" -d 'List dead letters'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and not __fish_seen_subcommand_from list replay help" -f -a "replay" -d 'Re-ingest dead letters through the current mapping; remove those that now succeed'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and not __fish_seen_subcommand_from list replay help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from list" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from list" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from list" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from list" -l reason -d 'Only this reason (invalid_json, not_object, missing_run_id, invalid_run_id, line_too_long, incomplete_line, write_failed)' -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from list" -l json
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l reason -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from replay" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from replay" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "list" -d 'List dead letters'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "replay" -d 'Re-ingest dead letters through the current mapping; remove those that now succeed'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand summary" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand summary" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand summary" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand summary" -l json -d 'Machine-readable output: {"run_id","status","metrics":{name: value}}'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand summary" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand summary" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand slo" -l config -d 'Config file (TOML)' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand slo" -l base -d 'Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in D/db/shipper-state.sqlite, DLQ in D/dlq' -r -F
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand slo" -l log-format -d 'Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines' -r -f -a "text\t''
json\t''"
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand slo" -l last -d 'The N most recently ended runs instead' -r
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand slo" -l json -d 'Machine-readable output: {"ok","runs":[{"run_id","ok","slos":[...]}]}'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand slo" -s h -l help -d 'Print help'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand slo" -s V -l version -d 'Print version'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "run" -d 'Run the daemon in the foreground (SIGTERM/SIGINT drain and exit 0; SIGHUP reloads)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "backfill" -d 'Ship historic files to their end and exit (resumable; safe while the daemon runs)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "status" -d 'Show per-file progress, run DBs and dead letters'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "check-config" -d 'Validate the configuration and print the effective config'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "maintain" -d 'One-off upkeep for cron or an operator: retention now, WAL checkpoint (TRUNCATE) and PRAGMA optimize of every run DB, optionally VACUUM'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "catalog" -d 'The run catalog (output.catalog): one row per run DB'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "export" -d 'Export runs\' events to Parquet, NDJSON or CSV: DIR/<run>.<ext> per run plus DIR/runs.<ext> (their catalog rows). Reads the run DBs read-only; safe while the daemon runs. Exit 2 when a --run has no run DB (nothing is written); exit 1 when a run selected from the catalog could not be read (the others are exported)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "dlq" -d 'Inspect or replay the dead-letter queue'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "summary" -d 'Print a run\'s summary: the built-in metrics and the configured [[summary]] ones (the stored summary if current, else computed and stored)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "slo" -d 'The SLO gate: judge the configured [[slo]] on a run, or on the N most recently ended runs. Exit 0 when every SLO holds, 1 when any fails or its metric is missing'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and not __fish_seen_subcommand_from run backfill status check-config maintain catalog export dlq summary slo help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and __fish_seen_subcommand_from catalog" -f -a "rebuild" -d 'Recreate the catalog from the run DBs (read-only; safe while the daemon runs)'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "list" -d 'List dead letters'
complete -c jsonl-shipper -n "__fish_jsonl_shipper_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "replay" -d 'Re-ingest dead letters through the current mapping; remove those that now succeed'
