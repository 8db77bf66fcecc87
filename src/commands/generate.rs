//! `generate` (hidden): man pages and shell completions rendered from the clap definition in
//! `cli`, so they can never describe flags the binary does not have. The copies `cargo deb`
//! ships live in `dist/`; an integration test fails when they differ from this output.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

use crate::cli::{Cli, Generate};

const BIN: &str = "jsonl-shipper";

/// The shells whose completions the package installs.
const PACKAGED_SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

pub(super) fn generate(what: Generate) -> anyhow::Result<ExitCode> {
    match what {
        Generate::Man { out: None } => main_page(&mut std::io::stdout().lock())?,
        Generate::Man { out: Some(dir) } => man_pages(&dir)?,
        Generate::Completions { shell, out: None } => {
            clap_complete::generate(shell, &mut Cli::command(), BIN, &mut std::io::stdout().lock())
        }
        Generate::Completions { shell, out: Some(dir) } => completion(shell, &dir)?,
        Generate::All { out } => {
            man_pages(&out.join("man"))?;
            for shell in PACKAGED_SHELLS {
                completion(shell, &out.join("completions"))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn completion(shell: Shell, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_complete::generate_to(shell, &mut Cli::command(), BIN, dir)
        .with_context(|| format!("writing {shell} completions into {}", dir.display()))?;
    Ok(())
}

/// `jsonl-shipper.1` plus `jsonl-shipper-<command>.1` for every visible command, git-style,
/// so `man jsonl-shipper-backfill` shows that command's flags.
fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut page = Vec::new();
        render(&mut page)?;
        let path = dir.join(name);
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
    };
    write(&format!("{BIN}.1"), &|w| main_page(w))?;
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut stack: Vec<clap::Command> = visible_subcommands(&cli);
    while let Some(cmd) = stack.pop() {
        stack.extend(visible_subcommands(&cmd));
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
        // The footer names the package, not the command ("status 0.1.0" by default).
        let man = Man::new(cmd).source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")));
        write(&man.get_filename(), &|w| {
            man.render(w)?;
            see_also(&mut Roff::new(), &name).to_writer(w)
        })?;
    }
    Ok(())
}

fn visible_subcommands(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands().filter(|c| !c.is_hide_set()).cloned().collect()
}

/// The main page: clap's sections, then what an operator looks for in a daemon's page
/// (exit codes, environment, files) and the per-command pages.
fn main_page(w: &mut dyn Write) -> std::io::Result<()> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let man = Man::new(cli);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;

    let mut roff = Roff::new();
    let item = |roff: &mut Roff, term: &str, text: &str| {
        roff.control("TP", []).text([bold(term)]).text([roman(text)]);
    };
    roff.control("SH", ["EXIT STATUS"]);
    item(&mut roff, "0", "Success.");
    item(&mut roff, "1", "Runtime failure (I/O, SQLite).");
    item(&mut roff, "2", "Usage or configuration error; the message names the key.");
    roff.control("SH", ["ENVIRONMENT"]);
    item(&mut roff, "JSONL_SHIPPER_CONFIG", "Config file, as --config.");
    item(&mut roff, "RUST_LOG", "Log filter (tracing EnvFilter syntax); overrides log.level.");
    item(
        &mut roff,
        "JOURNAL_STREAM",
        "Set by systemd when stderr goes to the journal: log lines carry no timestamp.",
    );
    item(
        &mut roff,
        "NOTIFY_SOCKET, WATCHDOG_USEC",
        "Set by systemd for Type=notify: run reports READY, STATUS, RELOADING, STOPPING and \
         watchdog pings.",
    );
    roff.control("SH", ["FILES"]);
    item(&mut roff, crate::commands::DEFAULT_CONFIG, "Default config file.");
    item(
        &mut roff,
        "/var/lib/jsonl-shipper",
        "State directory of the systemd unit: state DB, run DBs, dead letters.",
    );
    item(
        &mut roff,
        "/usr/share/doc/jsonl-shipper/README.md",
        "Installation, configuration keys, metrics, operations.",
    );
    see_also(&mut roff, BIN).to_writer(w)?;
    man.render_version_section(w)
}

/// Every page but `this`, from the CLI (so a new command is listed without a second edit).
fn see_also<'r>(roff: &'r mut Roff, this: &str) -> &'r mut Roff {
    let mut pages = vec![BIN.to_string()];
    pages.extend(
        Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| format!("{BIN}-{}", c.get_name())),
    );
    let mut text = Vec::new();
    for page in pages.into_iter().filter(|p| p != this) {
        text.extend([bold(page), roman("(1), ")]);
    }
    text.extend([bold("systemd.service"), roman("(5)")]);
    roff.control("SH", ["SEE ALSO"]).text(text)
}
