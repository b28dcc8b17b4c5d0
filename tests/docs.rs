//! The documentation, run: README.md and the book (docs/src/**/*.md).
//!
//! Every fenced block in a shell or data language says what it is with its
//! info string (mdBook and GitHub render the first word as the language and
//! ignore the rest):
//!
//! - ```` ```sh run=NAME ```` — commands, run in order with bash
//!   (`set -euo pipefail`), every block of session NAME in one shell, in a
//!   scratch directory of the page (see [`Workspace`]). A command ends at a
//!   line without a trailing `\`. Its trailing comment may promise what it
//!   does: `# exit N` (its exit status; 0 when not given) and `# => TEXT`
//!   (TEXT appears in its standard output or error). A command ending in `&`
//!   runs in the background for the rest of the session and promises
//!   nothing; the whole session's process group is stopped at its end.
//! - ```` ```yaml file=PATH ```` (any language) — written to PATH in the
//!   page's scratch directory before the page's commands run.
//! - ```` ```yaml policy ```` — a complete policy document set:
//!   `celgate validate` must accept it.
//! - ```` ```yaml suite ```` — a complete test suite (`policies:` relative to
//!   the scratch directory): `celgate test` must pass it.
//! - ```` ```sh norun ```` — shown, never run here (it needs Docker, a
//!   cluster, or is a fragment of a larger document).
//!
//! The README's demo block (between the `demo-requests` markers) is run by
//! tests/demo.rs instead.
//!
//! The commands find the `celgate` built for this test first on `PATH`, and
//! `.venv/bin/envoy` in the scratch directory is the Envoy the other
//! end-to-end tests use (`CELGATE_ENVOY`).
//!
//! The last tests check every relative link and `#anchor` of those pages.

mod common;

use common::{locate_envoy, repo_root};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one session may run, Envoy start-up included.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);

/// Languages whose blocks must say what they are.
const TAGGED_LANGUAGES: &[&str] = &["sh", "bash", "shell", "console", "yaml", "yml", "json"];

/// Repository folders the pages' commands may read, linked into each scratch
/// directory (read-only use: a `file=` block may not write into them).
const LINKED: &[&str] = &["examples", "policies", "tests", "deploy"];

#[derive(Debug, Clone)]
struct Block {
    /// The page, relative to the repository root.
    page: String,
    /// Line of the opening fence (1-based).
    line: usize,
    lang: String,
    attrs: Vec<String>,
    text: String,
    /// Inside the README's `demo-requests` markers.
    demo: bool,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.page, self.line)
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find_map(|a| a.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    }

    fn flag(&self, name: &str) -> bool {
        self.attrs.iter().any(|a| a == name)
    }
}

/// The fenced blocks of one Markdown page.
fn blocks(page: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, Vec<String>, String, String)> = None;
    let mut demo = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some((start, lang, attrs, fence, body)) = open.as_mut() {
            if trimmed.starts_with(fence.as_str()) && trimmed.trim_end() == fence.as_str() {
                out.push(Block {
                    page: page.to_string(),
                    line: *start,
                    lang: std::mem::take(lang),
                    attrs: std::mem::take(attrs),
                    text: std::mem::take(body),
                    demo,
                });
                open = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        if line.starts_with("<!-- demo-requests") {
            demo = true;
        } else if line.starts_with("<!-- /demo-requests") {
            demo = false;
        }
        for fence in ["````", "```"] {
            if let Some(info) = trimmed.strip_prefix(fence) {
                let mut words = info.split_whitespace().map(str::to_string);
                let lang = words.next().unwrap_or_default();
                open = Some((i + 1, lang, words.collect(), fence.into(), String::new()));
                break;
            }
        }
    }
    assert!(open.is_none(), "{page}: a code block is never closed");
    out
}

/// README.md and every page of the book, relative to the repository root.
fn pages() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = repo_root();
    let mut found = Vec::new();
    walk(&root.join("docs/src"), &mut found);
    let mut pages: Vec<String> = found
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    pages.sort();
    pages.insert(0, "README.md".into());
    pages
}

fn read_page(page: &str) -> String {
    std::fs::read_to_string(repo_root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"))
}

fn all_blocks() -> Vec<Block> {
    pages()
        .iter()
        .flat_map(|p| blocks(p, &read_page(p)))
        .collect()
}

// ---------------------------------------------------------------------------
// Commands

/// One command of a `run=` block.
#[derive(Debug, Clone)]
struct Cmd {
    at: String,
    /// The command as bash runs it, without its promise comment.
    text: String,
    background: bool,
    exit: i32,
    output: Option<String>,
}

/// Where the unquoted comment of a shell line starts (a `#` at the start of
/// a word, outside quotes), if it has one.
fn comment_start(line: &str) -> Option<usize> {
    let (mut single, mut double, mut prev_space) = (false, false, true);
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if !single => {
                chars.next();
            }
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => return Some(i),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    None
}

/// The commands of a `run=` block, with what each promises.
fn commands(block: &Block) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut lines = block.text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut text = line.to_string();
        while text.ends_with('\\') {
            let (_, next) = lines
                .next()
                .unwrap_or_else(|| panic!("{}: a `\\` on the last line", block.at()));
            text.push('\n');
            text.push_str(next);
        }
        let last = text.rsplit('\n').next().unwrap().to_string();
        let (mut exit, mut output) = (0, None);
        if let Some(c) = comment_start(&last) {
            let comment = last[c + 1..].trim();
            if let Some(rest) = comment.strip_prefix("exit ") {
                let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
                exit = n
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: `# exit N` needs a number", block.at()));
            }
            if let Some((_, want)) = comment.split_once("=> ") {
                output = Some(want.trim().to_string());
            }
            let keep = text.len() - (last.len() - c);
            text.truncate(keep);
        }
        let text = text.trim_end().to_string();
        let background = text.ends_with('&') && !text.ends_with("&&");
        assert!(
            !(background && (exit != 0 || output.is_some())),
            "{}: a background command promises nothing: {text}",
            block.at()
        );
        out.push(Cmd {
            at: format!("{}:{}", block.page, block.line + 1 + i),
            text: if background {
                text.trim_end_matches('&').trim_end().to_string()
            } else {
                text
            },
            background,
            exit,
            output,
        });
    }
    out
}

/// The shell script of one session: each command's output goes to
/// `<logs>/<n>.out`, its status to `<logs>/<n>.rc`; the script stops with
/// status 90 at the first broken promise.
fn script(cmds: &[Cmd], logs: &Path) -> String {
    let logs = logs.display();
    let mut s = String::from("set -euo pipefail\n");
    for (n, cmd) in cmds.iter().enumerate() {
        if cmd.background {
            s.push_str(&format!("{{ {}\n}} >'{logs}/{n}.out' 2>&1 &\n", cmd.text));
            continue;
        }
        s.push_str(&format!(
            "__rc=0\n{{ {}\n}} >'{logs}/{n}.out' 2>&1 </dev/null || __rc=$?\n\
             echo \"$__rc\" >'{logs}/{n}.rc'\n\
             [ \"$__rc\" = {} ] || exit 90\n",
            cmd.text, cmd.exit
        ));
        if cmd.output.is_some() {
            s.push_str(&format!(
                "grep -qF -f '{logs}/{n}.want' '{logs}/{n}.out' || exit 90\n"
            ));
        }
    }
    s
}

/// The scratch directory of one page: the repository's example folders
/// linked in, `.venv/bin/envoy`, and the page's `file=` blocks.
struct Workspace {
    dir: tempfile::TempDir,
    path: String,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        for name in LINKED {
            std::os::unix::fs::symlink(repo_root().join(name), dir.path().join(name)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join(".venv/bin")).unwrap();
        std::os::unix::fs::symlink(locate_envoy(), dir.path().join(".venv/bin/envoy")).unwrap();
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_celgate"));
        let path = format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Workspace { dir, path }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a `file=` block where it says.
    fn write(&self, block: &Block, rel: &str) {
        let rel_path = Path::new(rel);
        assert!(
            rel_path
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "{}: file={rel} must be a relative path without `..`",
            block.at()
        );
        let first = rel_path.components().next().unwrap().as_os_str();
        assert!(
            !LINKED.iter().any(|l| first == *l) && first != ".venv",
            "{}: file={rel} would write into the repository's {}",
            block.at(),
            first.to_string_lossy()
        );
        let path = self.root().join(rel_path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        assert!(
            !path.exists(),
            "{}: file={rel} is written twice on one page",
            block.at()
        );
        std::fs::write(&path, &block.text).unwrap();
    }

    fn celgate(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_celgate"))
            .args(args)
            .current_dir(self.root())
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// A session's bash in its own process group; the whole group (background
/// servers included) is stopped when it is dropped.
struct Session(Child);

impl Session {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            // The group outlives bash while a background member runs.
            let alive = Command::new("kill")
                .args(["-0", "--", &format!("-{}", self.0.id())])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !alive {
                break;
            }
            let _ = self.0.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal("-KILL");
        let _ = self.0.wait();
    }
}

/// Runs one session; `Err` says which promise broke, with the outputs.
fn run_session(ws: &Workspace, name: &str, cmds: &[Cmd]) -> Result<(), String> {
    let logs = tempfile::tempdir().unwrap();
    for (n, cmd) in cmds.iter().enumerate() {
        if let Some(want) = &cmd.output {
            std::fs::write(logs.path().join(format!("{n}.want")), format!("{want}\n")).unwrap();
        }
    }
    let script_path = logs.path().join("session.sh");
    std::fs::write(&script_path, script(cmds, logs.path())).unwrap();
    let child = Command::new("bash")
        .arg(&script_path)
        .current_dir(ws.root())
        .env("PATH", &ws.path)
        .env("CELGATE_ENVOY", locate_envoy())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut session = Session(child);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = session.0.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > SESSION_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |n: usize, ext: &str| {
        std::fs::read_to_string(logs.path().join(format!("{n}.{ext}"))).unwrap_or_default()
    };
    let background: String = cmds
        .iter()
        .enumerate()
        .filter(|(_, c)| c.background)
        .map(|(n, c)| {
            format!(
                "\n--- background `{}` ({}):\n{}",
                c.text,
                c.at,
                read(n, "out")
            )
        })
        .collect();
    let ran = (0..cmds.len()).rfind(|&n| !read(n, "rc").is_empty());
    let report = |why: String| {
        drop(session);
        Err(format!("session {name}: {why}{background}"))
    };
    match status {
        Some(s) if s.success() => {
            // Every command ran: the script did not stop early.
            let last = cmds.iter().rposition(|c| !c.background);
            if last.is_some() && ran != last {
                return report(format!("stopped after command {ran:?}, status {s}"));
            }
            Ok(())
        }
        None => report(format!(
            "timed out after {SESSION_TIMEOUT:?}; the last command that finished: {:?}",
            ran.map(|n| &cmds[n].at)
        )),
        Some(s) => {
            let Some(n) = ran else {
                return report(format!("bash failed before the first command ({s})"));
            };
            let cmd = &cmds[n];
            report(format!(
                "{}: `{}`\n  promised exit {} and output containing {:?}\n  got exit {}, output:\n{}",
                cmd.at,
                cmd.text,
                cmd.exit,
                cmd.output,
                read(n, "rc").trim(),
                read(n, "out")
            ))
        }
    }
}

/// Runs everything a page's blocks promise: its `policy` and `suite`
/// blocks, then its sessions in the order they first appear.
fn run_page(page: &str) -> Vec<String> {
    let blocks = blocks(page, &read_page(page));
    let ws = Workspace::new();
    let mut failures = Vec::new();
    for b in &blocks {
        if let Some(rel) = b.attr("file") {
            ws.write(b, rel);
        }
    }
    for (n, b) in blocks.iter().enumerate() {
        let (file, args): (String, Vec<&str>) = if b.flag("policy") {
            (
                format!(".docs-policy-{n}.yaml"),
                vec!["validate", "--policies"],
            )
        } else if b.flag("suite") {
            (format!(".docs-suite-{n}.test.yaml"), vec!["test"])
        } else {
            continue;
        };
        std::fs::write(ws.root().join(&file), &b.text).unwrap();
        let mut args = args;
        args.push(&file);
        let out = ws.celgate(&args);
        if !out.status.success() {
            failures.push(format!(
                "{}: `celgate {}` exited {}:\n{}{}",
                b.at(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let mut sessions: Vec<(String, Vec<Cmd>)> = Vec::new();
    for b in &blocks {
        let Some(name) = b.attr("run") else { continue };
        let cmds = commands(b);
        match sessions.iter_mut().find(|(n, _)| n == name) {
            Some((_, all)) => all.extend(cmds),
            None => sessions.push((name.to_string(), cmds)),
        }
    }
    for (name, cmds) in &sessions {
        if let Err(e) = run_session(&ws, name, cmds) {
            failures.push(format!("{page}: {e}"));
        }
    }
    failures
}

#[test]
fn every_block_says_whether_and_how_it_runs() {
    let mut problems = Vec::new();
    for b in all_blocks() {
        if b.demo || !TAGGED_LANGUAGES.contains(&b.lang.as_str()) {
            continue;
        }
        let kinds = ["run", "file"]
            .iter()
            .filter(|k| b.attr(k).is_some())
            .count()
            + ["policy", "suite", "norun"]
                .iter()
                .filter(|f| b.flag(f))
                .count();
        if kinds != 1 {
            problems.push(format!(
                "{}: ```{} {}: give exactly one of run=SESSION, file=PATH, policy, suite, norun",
                b.at(),
                b.lang,
                b.attrs.join(" ")
            ));
        }
        if b.attr("run").is_some() && !matches!(b.lang.as_str(), "sh" | "bash") {
            problems.push(format!("{}: run= is for sh blocks", b.at()));
        }
        for a in &b.attrs {
            let key = a.split('=').next().unwrap();
            if !["run", "file", "policy", "suite", "norun"].contains(&key) {
                problems.push(format!("{}: unknown block attribute {a:?}", b.at()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_promises_are_read_as_written() {
    let b = Block {
        page: "p.md".into(),
        line: 1,
        lang: "sh".into(),
        attrs: vec!["run=x".into()],
        text: "# prose\ncelgate check --request a.json   # exit 3: denied\n\
               curl -s 'http://h/#frag' \\\n  -H 'a: b' # => HTTP/1.1 401\n\
               celgate serve &\necho '# not a comment'\n"
            .into(),
        demo: false,
    };
    let c = commands(&b);
    assert_eq!(c.len(), 4, "{c:#?}");
    assert_eq!((c[0].exit, c[0].output.as_deref()), (3, None));
    assert_eq!(c[0].text, "celgate check --request a.json");
    assert_eq!(c[0].at, "p.md:3");
    assert_eq!(c[1].text, "curl -s 'http://h/#frag' \\\n  -H 'a: b'");
    assert_eq!(
        (c[1].exit, c[1].output.as_deref()),
        (0, Some("HTTP/1.1 401"))
    );
    assert!(c[2].background && c[2].text == "celgate serve");
    assert_eq!(c[3].text, "echo '# not a comment'");
}

#[test]
fn a_broken_promise_fails_the_session() {
    let ws = Workspace::new();
    let cmd = |text: &str, exit, output: Option<&str>| Cmd {
        at: "t".into(),
        text: text.into(),
        background: false,
        exit,
        output: output.map(str::to_string),
    };
    assert!(run_session(
        &ws,
        "ok",
        &[cmd(
            "celgate validate --policies policies",
            0,
            Some("valid")
        )]
    )
    .is_ok());
    let wrong_status = run_session(&ws, "s", &[cmd("false", 0, None), cmd("true", 0, None)]);
    assert!(wrong_status.unwrap_err().contains("got exit 1"));
    let wrong_output = run_session(&ws, "o", &[cmd("echo 200", 0, Some("401"))]);
    assert!(wrong_output.unwrap_err().contains("\"401\""));
    let wrong_exit = run_session(
        &ws,
        "e",
        &[cmd("celgate check --request /nonexistent", 3, None)],
    );
    assert!(wrong_exit.unwrap_err().contains("promised exit 3"));
}

#[test]
fn the_readme_runs_as_written() {
    let failures = run_page("README.md");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_book_runs_as_written() {
    let failures: Vec<String> = pages()
        .iter()
        .filter(|p| p.as_str() != "README.md")
        .flat_map(|p| run_page(p))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_readme_first_policy_walkthrough_goes_through_envoy() {
    // The walkthrough is the README's promise that matters most: make sure
    // it still reaches a real Envoy, not only the CLI.
    let cmds: Vec<Cmd> = blocks("README.md", &read_page("README.md"))
        .iter()
        .filter(|b| b.attr("run") == Some("first-policy"))
        .flat_map(commands)
        .collect();
    let has = |s: &str| cmds.iter().any(|c| c.text.contains(s));
    for step in [
        "celgate validate",
        "celgate check",
        "--explain",
        "celgate test",
        "celgate serve",
        ".venv/bin/envoy -c examples/first-policy/envoy.yaml",
    ] {
        assert!(has(step), "the walkthrough lost its `{step}` step");
    }
    assert!(cmds
        .iter()
        .any(|c| c.text.contains("127.0.0.1:10080") && c.output.is_some()));
}

// ---------------------------------------------------------------------------
// Links

/// mdBook's (and GitHub's) id of a heading: its text without markup,
/// lower-cased, whitespace to `-`, other punctuation but `-` and `_` dropped;
/// a repeated id gets `-1`, `-2`, ...
fn heading_ids(text: &str) -> BTreeSet<String> {
    let link = regex::Regex::new(r"\[([^\]]*)\]\([^)]*\)").unwrap();
    let mut ids = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let title = link.replace_all(title.trim(), "$1");
        let id: String = title
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    Some(c.to_ascii_lowercase())
                } else if c.is_whitespace() {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        let n = seen.entry(id.clone()).or_insert(0);
        ids.insert(if *n == 0 {
            id.clone()
        } else {
            format!("{id}-{n}")
        });
        *n += 1;
    }
    ids
}

/// The link targets of a page (inline and reference links, outside code).
fn links(text: &str) -> Vec<(usize, String)> {
    let inline = regex::Regex::new(r"\]\(([^)\s]+)(?:\s+[^)]*)?\)").unwrap();
    let reference = regex::Regex::new(r"^\s*\[[^\]]+\]:\s*(\S+)").unwrap();
    let auto = regex::Regex::new(r"<(https?://[^>\s]+)>").unwrap();
    let code = regex::Regex::new(r"`[^`]*`").unwrap();
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let line = code.replace_all(line, "");
        for re in [&inline, &reference, &auto] {
            for c in re.captures_iter(&line) {
                out.push((i + 1, c[1].to_string()));
            }
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut external = BTreeSet::new();
    for page in pages() {
        let text = read_page(&page);
        let dir = Path::new(&page).parent().unwrap().to_path_buf();
        let in_book = page.starts_with("docs/src/");
        for (line, target) in links(&text) {
            let at = format!("{page}:{line}: {target}");
            if target.starts_with("http://") || target.starts_with("https://") {
                external.insert(target);
                continue;
            }
            if target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                root.join(&page)
            } else {
                root.join(&dir).join(file)
            };
            let Ok(canonical) = resolved.canonicalize() else {
                broken.push(format!("{at}: no such file"));
                continue;
            };
            if in_book && !canonical.starts_with(root.join("docs/src").canonicalize().unwrap()) {
                broken.push(format!(
                    "{at}: outside docs/src, which the built book does not hold (name the file as code instead)"
                ));
                continue;
            }
            if !canonical.starts_with(root.canonicalize().unwrap()) {
                broken.push(format!("{at}: outside the repository"));
                continue;
            }
            if let Some(anchor) = anchor {
                if canonical.extension().is_none_or(|e| e != "md") {
                    broken.push(format!("{at}: an anchor into a file that is not Markdown"));
                    continue;
                }
                let ids = heading_ids(&std::fs::read_to_string(&canonical).unwrap());
                if !ids.contains(anchor) {
                    broken.push(format!(
                        "{at}: no heading with id {anchor:?} (ids: {ids:?})"
                    ));
                }
            }
        }
    }
    println!("external links (not fetched):");
    for e in &external {
        println!("  {e}");
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn heading_ids_follow_mdbook() {
    let ids = heading_ids(
        "# Policy reference\n## What is checked when policies load\n\
         ## `celgate serve`\n## Identity: `jwt` and `jwks`\n## Notes\n## Notes\n\
         ```\n# not a heading\n```\n",
    );
    let want = [
        "policy-reference",
        "what-is-checked-when-policies-load",
        "celgate-serve",
        "identity-jwt-and-jwks",
        "notes",
        "notes-1",
    ];
    assert_eq!(ids, want.iter().map(|s| s.to_string()).collect());
}

#[test]
fn the_readme_stays_inside_the_repository() {
    let readme = read_page("README.md");
    assert!(
        !readme.contains("../shared"),
        "README.md points outside the repository"
    );
    for (line, target) in links(&readme) {
        assert!(
            !target.starts_with("../") && !target.starts_with('/'),
            "README.md:{line}: {target} leaves the repository"
        );
    }
}

#[test]
fn the_book_lists_every_page() {
    let summary = read_page("docs/src/SUMMARY.md");
    let listed: BTreeSet<String> = links(&summary)
        .into_iter()
        .map(|(_, t)| format!("docs/src/{t}"))
        .collect();
    for page in pages() {
        if page == "README.md" || page == "docs/src/SUMMARY.md" {
            continue;
        }
        assert!(
            listed.contains(&page),
            "{page} is not in docs/src/SUMMARY.md"
        );
    }
}
