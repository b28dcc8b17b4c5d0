//! The command-line reference as Markdown (`celgate man --format markdown`),
//! written from the command-line definition itself, so that the published
//! page (`docs/src/reference/cli.md`) says what the program accepts.

use clap::builder::StyledStr;
use clap::{Arg, ArgAction, Command};
use std::fmt::Write as _;

/// Where the page is published in the repository: `tests/reference.rs`
/// compares it with what [`markdown`] writes.
pub const PAGE: &str = "docs/src/reference/cli.md";

#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    /// The root command's long help has no `EXIT STATUS` table.
    #[error("the command's long help has no EXIT STATUS section")]
    NoExitStatus,
    /// A status the program exits with is not in that table.
    #[error("exit status {0} is not described in the EXIT STATUS section")]
    MissingStatus(u8),
}

/// The reference page of `cli`: its description, global options, every
/// visible command with its arguments and options (environment variable,
/// default, possible values, help), and the exit statuses, each of
/// `statuses` being required to appear in the root command's `EXIT STATUS`
/// section.
pub fn markdown(cli: Command, statuses: &[u8]) -> Result<String, ManualError> {
    // Built, so that usage lines are complete; no terminal width, so that the
    // page does not depend on where it is written.
    let mut cli = cli.term_width(0);
    cli.build();
    let name = cli.get_name().to_owned();
    let exit = exit_statuses(&cli)?;
    for s in statuses {
        if !exit.iter().any(|(code, _)| code == s) {
            return Err(ManualError::MissingStatus(*s));
        }
    }

    let mut out = String::new();
    out.push_str("# Command-line reference\n\n");
    out.push_str(
        "<!-- Written by `celgate man --format markdown` from the command-line definition; \
         do not edit. `cargo test --test reference` checks it, and \
         `CELGATE_BLESS=1 cargo test --test reference` rewrites it. -->\n\n",
    );
    if let Some(about) = cli.get_long_about().or(cli.get_about()) {
        out.push_str(&paragraphs(about));
    }
    out.push_str(
        "A flag that names an environment variable can be set through it instead; \
         the flag wins when both are given. A flag without a value (a switch) \
         reads `true` or `false` from its variable. Every command also takes \
         `-h`/`--help` (`--help` shows the long form, as on this page; \
         `celgate help <command>` does the same), and `celgate --version` prints \
         the version.\n\n",
    );

    let globals: Vec<&Arg> = cli
        .get_arguments()
        .filter(|a| a.is_global_set() && !a.is_hide_set() && !is_builtin(a))
        .collect();
    if !globals.is_empty() {
        out.push_str("## Global options\n\nAccepted by every command.\n\n");
        for a in globals {
            out.push_str(&arg_entry(a));
        }
    }

    // clap's own `help` command is described in the introduction.
    let commands: Vec<&Command> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .collect();
    out.push_str("## Commands\n\n| command | what it does |\n|---|---|\n");
    for c in &commands {
        let full = format!("{name} {}", c.get_name());
        let summary = c.get_about().map(plain).unwrap_or_default();
        let _ = writeln!(
            out,
            "| [`{full}`](#{}) | {} |",
            full.replace(' ', "-"),
            escape_cell(&summary)
        );
    }
    out.push('\n');

    for c in commands {
        out.push_str(&command_section(&name, c));
    }

    out.push_str("## Exit status\n\nThe same for every command.\n\n");
    out.push_str("| status | meaning |\n|---|---|\n");
    for (code, meaning) in &exit {
        let _ = writeln!(out, "| {code} | {} |", escape_cell(meaning));
    }
    Ok(out)
}

fn command_section(root: &str, c: &Command) -> String {
    let mut out = String::new();
    let full = format!("{root} {}", c.get_name());
    let _ = writeln!(out, "## `{full}`\n");
    let usage = plain(&c.clone().render_usage());
    let usage = usage.trim().trim_start_matches("Usage:").trim();
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    if let Some(about) = c.get_long_about().or(c.get_about()) {
        out.push_str(&paragraphs(about));
    }

    let own: Vec<&Arg> = c
        .get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set() && !is_builtin(a))
        .collect();
    let positionals: Vec<&&Arg> = own.iter().filter(|a| a.is_positional()).collect();
    if !positionals.is_empty() {
        out.push_str("### Arguments\n\n");
        for a in positionals {
            out.push_str(&arg_entry(a));
        }
    }
    // Options under their help headings, in the order the headings first
    // appear.
    let mut headings: Vec<Option<&str>> = Vec::new();
    for a in own.iter().filter(|a| !a.is_positional()) {
        if !headings.contains(&a.get_help_heading()) {
            headings.push(a.get_help_heading());
        }
    }
    for heading in headings {
        let _ = writeln!(out, "### {}\n", heading.unwrap_or("Options"));
        for a in own
            .iter()
            .filter(|a| !a.is_positional() && a.get_help_heading() == heading)
        {
            out.push_str(&arg_entry(a));
        }
    }
    out
}

/// `--help` and `--version`, which clap adds to every command.
fn is_builtin(a: &Arg) -> bool {
    matches!(
        a.get_action(),
        ArgAction::Help | ArgAction::HelpLong | ArgAction::HelpShort | ArgAction::Version
    )
}

/// One argument: a list item with its syntax and attributes, then its help.
fn arg_entry(a: &Arg) -> String {
    let takes_value = a.get_action().takes_values();
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    let repeated = matches!(a.get_action(), ArgAction::Append);
    let mut syntax = String::new();
    if a.is_positional() {
        let _ = write!(syntax, "<{value}>");
    } else {
        if let Some(s) = a.get_short() {
            let _ = write!(syntax, "-{s}, ");
        }
        if let Some(l) = a.get_long() {
            let _ = write!(syntax, "--{l}");
        }
        if takes_value {
            let _ = write!(syntax, " <{value}>");
        }
    }
    if repeated {
        syntax.push_str("...");
    }
    let mut facts = Vec::new();
    if a.is_required_set() {
        facts.push("required".to_owned());
    }
    if let Some(env) = a.get_env() {
        facts.push(format!("env `{}`", env.to_string_lossy()));
    }
    let defaults: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if takes_value && !defaults.is_empty() {
        let shown = defaults.join(",");
        facts.push(if shown.is_empty() {
            "default: empty".to_owned()
        } else {
            format!("default `{shown}`")
        });
    }
    let possible: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| format!("`{}`", p.get_name()))
        .collect();
    if takes_value && !possible.is_empty() {
        facts.push(format!("one of {}", possible.join(", ")));
    }
    if repeated {
        facts.push(match a.get_value_delimiter() {
            Some(d) if a.get_env().is_some() => {
                format!("repeatable; `{d}`-separated in the variable")
            }
            Some(d) => format!("repeatable, or `{d}`-separated"),
            None => "repeatable".to_owned(),
        });
    }
    let mut out = format!("- `{syntax}`");
    if !facts.is_empty() {
        let _ = write!(out, " — {}", facts.join("; "));
    }
    out.push_str("\n\n");
    if let Some(help) = a.get_long_help().or(a.get_help()) {
        for line in paragraphs(help).lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// The rows of the `EXIT STATUS` section of the root command's long help:
/// `  N  meaning` lines after the heading.
fn exit_statuses(cli: &Command) -> Result<Vec<(u8, String)>, ManualError> {
    let text = cli
        .get_after_long_help()
        .map(plain)
        .ok_or(ManualError::NoExitStatus)?;
    let (_, section) = text
        .split_once("EXIT STATUS")
        .ok_or(ManualError::NoExitStatus)?;
    let mut rows = Vec::new();
    for line in section.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        let Some((code, meaning)) = line.split_once(char::is_whitespace) else {
            break;
        };
        let Ok(code) = code.parse::<u8>() else { break };
        rows.push((code, meaning.trim().to_owned()));
    }
    if rows.is_empty() {
        return Err(ManualError::NoExitStatus);
    }
    Ok(rows)
}

fn plain(s: &StyledStr) -> String {
    // `Display` of a styled string is its text without styles.
    s.to_string()
}

/// Help text as Markdown paragraphs: a paragraph whose lines are all
/// indented (an example command, a JSON document) becomes a code block;
/// other text is escaped where Markdown would read it as markup.
fn paragraphs(text: &StyledStr) -> String {
    let text = plain(text);
    let mut out = String::new();
    for para in text.split("\n\n") {
        let para = para.trim_end();
        if para.trim().is_empty() {
            continue;
        }
        let lines: Vec<&str> = para.lines().collect();
        if lines.iter().all(|l| l.starts_with("  ")) {
            let indent = lines
                .iter()
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            out.push_str("```text\n");
            for l in lines {
                let _ = writeln!(out, "{}", &l[indent..]);
            }
            out.push_str("```\n\n");
        } else {
            let joined: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
            let mut text = escape(&joined.join(" "));
            // clap drops the full stop of a one-sentence help.
            if !text.ends_with(['.', ':', '!', '?']) {
                text.push('.');
            }
            let _ = writeln!(out, "{text}\n");
        }
    }
    out
}

/// Escapes what Markdown would take for markup (HTML tags, emphasis) outside
/// code spans.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        // An underscore inside a word (`ext_authz`) is never emphasis.
        let in_word = |j: Option<usize>| {
            j.and_then(|j| chars.get(j))
                .is_some_and(|x| x.is_alphanumeric())
        };
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '_' if in_code || (in_word(i.checked_sub(1)) && in_word(Some(i + 1))) => out.push(c),
            '<' | '>' | '*' | '_' | '[' | ']' if !in_code => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// [`escape`], and a table cell's `|`.
fn escape_cell(text: &str) -> String {
    escape(text).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_outside_code_spans_only() {
        assert_eq!(escape("a <b> *c* `<d>*`"), r"a \<b\> \*c\* `<d>*`");
        assert_eq!(escape("ext_authz _x_ `_y_`"), r"ext_authz \_x\_ `_y_`");
        assert_eq!(escape_cell("a|b `c|d`"), r"a\|b `c\|d`");
    }

    #[test]
    fn indented_paragraphs_become_code_blocks() {
        let text = StyledStr::from("Run it:\n\n  celgate x\n  celgate y\n\nDone");
        assert_eq!(
            paragraphs(&text),
            "Run it:\n\n```text\ncelgate x\ncelgate y\n```\n\nDone.\n\n"
        );
    }

    #[test]
    fn every_status_must_be_described() {
        let cli = Command::new("x")
            .subcommand(Command::new("y"))
            .after_long_help("EXIT STATUS:\n  0  fine\n  1  not fine");
        let page = markdown(cli.clone(), &[0, 1]).unwrap();
        assert!(page.contains("| 1 | not fine |"), "{page}");
        assert!(matches!(
            markdown(cli, &[0, 2]),
            Err(ManualError::MissingStatus(2))
        ));
        assert!(matches!(
            markdown(Command::new("x"), &[0]),
            Err(ManualError::NoExitStatus)
        ));
    }
}
