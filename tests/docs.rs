//! The settings the docs name against the settings the code reads (issue 21), with no services.
//!
//! - docs/configuration.md: every environment variable a command reads (clap's `env`, walked over
//!   every subcommand, plus the few read otherwise: [`OTHER_SETTINGS`]) has a row in its table,
//!   every row names one of them, the default column is the code's default, and the "read by"
//!   column says `worker` / `receiver` exactly when that command reads it.
//! - README.md and the other docs: every setting-like name they mention (`WXNOTIFY_*`, `WECHAT_*`,
//!   `AMQP_URL`, `DATABASE_URL`, `RUST_LOG`) is a setting the code reads, and a default they state
//!   as "`NAME` (default `VALUE`)" is the code's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::CommandFactory;
use wxnotify::cli::Cli;

/// Settings not read through clap: the name, the file that reads it, text in that file that
/// shows it does, and its default (`None`: no default).
const OTHER_SETTINGS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "RUST_LOG",
        "src/telemetry.rs",
        "EnvFilter::try_from_default_env",
        Some(wxnotify::telemetry::DEFAULT_FILTER),
    ),
    ("USER", "src/ops/dlq.rs", "std::env::var(\"USER\")", None),
    (
        "WXNOTIFY_COUNT_ALLOCATIONS",
        "src/cli.rs",
        "std::env::var(\"WXNOTIFY_COUNT_ALLOCATIONS\")",
        None,
    ),
];

/// One environment variable as the code reads it.
#[derive(Debug, Default)]
struct Setting {
    /// The commands that read it, e.g. "wxnotify dlq replay".
    commands: BTreeSet<String>,
    /// Its default per command (`None`: no default there).
    defaults: BTreeMap<String, Option<String>>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every `env = "…"` of every (sub)command, with its default.
fn code_settings() -> BTreeMap<String, Setting> {
    fn walk(cmd: &clap::Command, path: &str, globals: &[&clap::Arg], out: &mut BTreeMap<String, Setting>) {
        let args: Vec<&clap::Arg> = cmd.get_arguments().chain(globals.iter().copied()).collect();
        for arg in &args {
            let Some(env) = arg.get_env() else { continue };
            let name = env.to_string_lossy().into_owned();
            let default = match arg.get_default_values() {
                [] => None,
                values => Some(
                    values
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            };
            let setting = out.entry(name).or_default();
            setting.commands.insert(path.to_string());
            setting.defaults.insert(path.to_string(), default);
        }
        let globals: Vec<&clap::Arg> = args.into_iter().filter(|a| a.is_global_set()).collect();
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), &globals, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&Cli::command(), "wxnotify", &[], &mut out);
    for (name, file, proof, default) in OTHER_SETTINGS {
        assert!(
            read(file).contains(proof),
            "{name}: tests/docs.rs says {file} reads it ({proof:?}), but that text is not in {file}"
        );
        out.entry(name.to_string())
            .or_default()
            .defaults
            .insert(file.to_string(), default.map(str::to_string));
    }
    out
}

/// The first `…` in a text.
fn first_code(text: &str) -> Option<&str> {
    let start = text.find('`')? + 1;
    let len = text[start..].find('`')?;
    Some(&text[start..start + len])
}

fn is_setting_name(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// docs/configuration.md's rows: name → (read by, default as written: `None` for "—", "unset", …).
fn documented_settings(doc: &str) -> BTreeMap<String, (String, Option<String>)> {
    let mut rows = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `NAME` | read by | default | meaning |" splits into 6 cells, empty at both ends.
        if cells.len() < 6 || !cells[1].starts_with('`') {
            continue;
        }
        let Some(name) = first_code(cells[1]).filter(|n| is_setting_name(n)) else {
            continue;
        };
        let default = cells[3]
            .starts_with('`')
            .then(|| first_code(cells[3]).unwrap_or_default().to_string());
        let previous = rows.insert(name.to_string(), (cells[2].to_string(), default));
        assert!(previous.is_none(), "docs/configuration.md: {name} has two rows");
    }
    rows
}

/// A problem with `name`'s default: `documented` against the code's defaults, or `None` if they agree.
fn default_mismatch(name: &str, documented: Option<&str>, setting: &Setting, doc: &str) -> Option<String> {
    let code: BTreeSet<&str> = setting.defaults.values().filter_map(|d| d.as_deref()).collect();
    let where_ = |value: &str| {
        setting
            .defaults
            .iter()
            .filter(|(_, d)| d.as_deref() == Some(value))
            .map(|(command, _)| command.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match documented {
        Some(documented) => {
            if code.is_empty() {
                return Some(format!(
                    "{name}: {doc} says its default is `{documented}`, the code has no default"
                ));
            }
            code.iter().find(|&&c| c != documented).map(|c| {
                format!(
                    "{name}: {doc} says its default is `{documented}`, the code's is `{c}` ({})",
                    where_(c)
                )
            })
        }
        None => code
            .first()
            .map(|c| format!("{name}: {doc} gives no default, the code's is `{c}` ({})", where_(c))),
    }
}

#[test]
fn configuration_md_lists_every_setting_with_the_codes_default() {
    let code = code_settings();
    let documented = documented_settings(&read("docs/configuration.md"));
    let mut problems = Vec::new();
    for (name, setting) in &code {
        if !documented.contains_key(name) {
            problems.push(format!(
                "{name}: read by {} but has no row in docs/configuration.md",
                setting.defaults.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for (name, (read_by, default)) in &documented {
        let Some(setting) = code.get(name) else {
            problems.push(format!(
                "{name}: docs/configuration.md has a row for it, but no command reads it"
            ));
            continue;
        };
        problems.extend(default_mismatch(
            name,
            default.as_deref(),
            setting,
            "docs/configuration.md",
        ));
        if read_by.contains("every command") || OTHER_SETTINGS.iter().any(|o| o.0 == name) {
            continue;
        }
        for command in ["worker", "receiver"] {
            let reads = setting.commands.contains(&format!("wxnotify {command}"));
            let says = read_by
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == command);
            if reads != says {
                problems.push(format!(
                    "{name}: docs/configuration.md says it is read by \"{read_by}\", but `wxnotify {command}` {} it",
                    if reads { "reads" } else { "does not read" }
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md disagrees with the code:\n{}",
        problems.join("\n")
    );
}

/// Setting-like names in a text: `WXNOTIFY_*`, `WECHAT_*`, `AMQP_URL`, `DATABASE_URL`, `RUST_LOG`.
fn mentioned_settings(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        // `WXNOTIFY_*` speaks of all of them: a prefix, not a name.
        .filter(|w| is_setting_name(w) && !w.ends_with('_'))
        .filter(|w| {
            w.starts_with("WXNOTIFY_")
                || w.starts_with("WECHAT_")
                || matches!(*w, "AMQP_URL" | "DATABASE_URL" | "RUST_LOG")
        })
        .collect()
}

/// "`NAME` (default `VALUE`)" in a text: (name, value).
fn stated_defaults(text: &str) -> Vec<(&str, &str)> {
    const MARK: &str = "` (default `";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let name = rest[..at].rsplit('`').next().unwrap_or_default();
        let after = &rest[at + MARK.len()..];
        if let Some(end) = after.find('`')
            && is_setting_name(name)
        {
            out.push((name, &after[..end]));
        }
        rest = after;
    }
    out
}

#[test]
fn readme_and_docs_name_only_real_settings_with_the_codes_defaults() {
    let code = code_settings();
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| format!("docs/{}", e.expect("docs/ entry").file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut problems = Vec::new();
    for file in &files {
        let text = read(file);
        for name in mentioned_settings(&text) {
            if !code.contains_key(name) {
                problems.push(format!("{file} names {name}, which no command reads"));
            }
        }
        for (name, value) in stated_defaults(&text) {
            match code.get(name) {
                Some(setting) => problems.extend(default_mismatch(name, Some(value), setting, file)),
                None => problems.push(format!("{file} gives {name} a default, but no command reads it")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the docs disagree with the code:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_check() {
    // The parsers find what they are meant to, so an empty result above means agreement.
    let code = code_settings();
    assert_eq!(
        code["WXNOTIFY_PREFETCH"].defaults["wxnotify worker"].as_deref(),
        Some("1024")
    );
    assert!(code["WXNOTIFY_LOG_FORMAT"].commands.contains("wxnotify dlq replay"));
    let rows =
        documented_settings("| `A_B` | worker | `1` | x |\n| `a_b` | worker | `2` | y |\n| `C` | worker | — | z |");
    assert_eq!(rows["A_B"].1.as_deref(), Some("1"));
    assert_eq!(rows["C"].1, None);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        stated_defaults("up to `WXNOTIFY_PREFETCH` (default `1024`) messages"),
        [("WXNOTIFY_PREFETCH", "1024")]
    );
    assert_eq!(
        mentioned_settings("set WXNOTIFY_RATE_LIMIT, not WXNOTIFY_ (nor MY_VAR)"),
        BTreeSet::from(["WXNOTIFY_RATE_LIMIT"])
    );
}
