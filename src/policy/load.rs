//! Reading policy files: paths → YAML/JSON documents with their location.

use super::LoadError;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// One document of one file.
#[derive(Debug)]
pub struct Document {
    pub path: PathBuf,
    /// 1-based position of the document in a multi-document file.
    pub index: usize,
    /// 1-based line the document starts on.
    pub line: usize,
    pub value: serde_json::Value,
}

/// Every policy file under `paths`: files as given, directories recursively
/// (`.yaml`, `.yml`, `.json`), skipping entries whose name starts with `.`
/// (Kubernetes ConfigMap mounts keep their versions in such folders; a
/// directory with a `..data` link is read through it, see `Walk::walk`). The
/// order is stable: sorted by path within each directory.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut walk = Walk::default();
    walk.list(paths)?;
    Ok(walk.files.into_iter().map(|(p, _)| p).collect())
}

/// As [`policy_files`], each with the metadata the walk read (links
/// followed): what a reload and the watcher's settle check compare.
pub fn policy_files_with_metadata(paths: &[PathBuf]) -> Walked {
    policy_files_and_folders(paths).map(|(files, _)| files)
}

/// As [`policy_files_with_metadata`], with each folder the walk read and its
/// metadata, taken before it was read: while a folder keeps its stamp, no
/// entry of it was added, removed or renamed.
pub fn policy_files_and_folders(paths: &[PathBuf]) -> Result<(Listed, Listed), LoadError> {
    let mut walk = Walk {
        stat: true,
        ..Walk::default()
    };
    walk.list(paths)?;
    let files = walk
        .files
        .into_iter()
        .filter_map(|(p, m)| m.map(|m| (p, m)));
    Ok((files.collect(), walk.folders))
}

/// Paths with their metadata.
pub type Listed = Vec<(PathBuf, std::fs::Metadata)>;

#[derive(Default)]
struct Walk {
    /// Whether each policy file is looked at (else only links are).
    stat: bool,
    /// Each policy file, with its metadata when `stat` or when it was
    /// looked at anyway (a path given as a file, a link followed).
    files: Vec<(PathBuf, Option<std::fs::Metadata>)>,
    folders: Listed,
}

/// What says a file or folder changed: its size, modification time and
/// (on Unix) change time and identity. Two looks that give the same stamp
/// saw it the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    identity: (u64, u64),
}

/// Something modified this close before it was looked at may have changed
/// again within its time stamp's granularity: its stamp cannot tell.
pub const RACY: Duration = Duration::from_secs(2);

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let (changed, identity) = {
            use std::os::unix::fs::MetadataExt as _;
            ((m.ctime(), m.ctime_nsec()), (m.dev(), m.ino()))
        };
        #[cfg(not(unix))]
        let (changed, identity) = ((0, 0), (0, 0));
        Stamp {
            len: m.len(),
            modified: m.modified().ok(),
            changed,
            identity,
        }
    }

    /// Whether it was last modified well before `at` ([`RACY`]), so that a
    /// later change shows in its stamp.
    pub fn settled_by(&self, at: SystemTime) -> bool {
        self.modified
            .and_then(|t| t.checked_add(RACY))
            .is_some_and(|t| t <= at)
    }
}

fn io_error(path: &Path, e: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The policy files under some paths with their metadata, in load order, or
/// why they cannot be listed.
pub type Walked = Result<Listed, LoadError>;

impl Walk {
    fn list(&mut self, paths: &[PathBuf]) -> Result<(), LoadError> {
        for p in paths {
            let meta = std::fs::metadata(p).map_err(|e| io_error(p, e))?;
            if meta.is_dir() {
                self.walk(p)?;
            } else {
                self.files.push((p.clone(), Some(meta)));
            }
        }
        Ok(())
    }

    fn walk(&mut self, dir: &Path) -> Result<(), LoadError> {
        self.note_folder(dir)?;
        // A Kubernetes ConfigMap/Secret mount: the visible entries are links
        // into `..data`, itself a link the kubelet swaps to a new versioned
        // folder in one rename. Resolving `..data` once and reading that folder
        // means one load sees one version, never half of each.
        let data = dir.join("..data");
        if std::fs::symlink_metadata(&data).is_ok_and(|m| m.file_type().is_symlink()) {
            if let Ok(version) = std::fs::canonicalize(&data) {
                if version.is_dir() {
                    self.note_folder(&version)?;
                    return self.walk_entries(&version);
                }
            }
        }
        self.walk_entries(dir)
    }

    /// Notes `dir`'s stamp before its entries are read.
    fn note_folder(&mut self, dir: &Path) -> Result<(), LoadError> {
        let stamp = std::fs::metadata(dir).map_err(|e| io_error(dir, e))?;
        self.folders.push((dir.to_path_buf(), stamp));
        Ok(())
    }

    fn walk_entries(&mut self, dir: &Path) -> Result<(), LoadError> {
        for (_, entry) in sorted_visible(dir).map_err(|e| io_error(dir, e))? {
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io_error(&path, e))?;
            if kind.is_symlink() {
                // Follow symlinks: ConfigMap mounts link each key to `..data/key`.
                let meta = std::fs::metadata(&path).map_err(|e| io_error(&path, e))?;
                if meta.is_dir() {
                    self.walk(&path)?;
                } else if is_policy_file(&path) {
                    self.files.push((path, Some(meta)));
                }
            } else if kind.is_dir() {
                self.walk(&path)?;
            } else if is_policy_file(&path) {
                // Looked at through the open directory: its path is not
                // resolved again from the root.
                let meta = if self.stat {
                    Some(entry.metadata().map_err(|e| io_error(&path, e))?)
                } else {
                    None
                };
                self.files.push((path, meta));
            }
        }
        Ok(())
    }
}

/// The entries of `dir` without hidden ones (a name starting with `.`),
/// sorted by file name, so that a walk's order does not depend on the file
/// system.
fn sorted_visible(dir: &Path) -> std::io::Result<Vec<(std::ffi::OsString, std::fs::DirEntry)>> {
    let mut entries = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        if !name.as_encoded_bytes().starts_with(b".") {
            entries.push((name, e));
        }
    }
    // Names are unique within a directory.
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// The entries of `dir` every directory walk visits ([`sorted_visible`]),
/// each with its (lossy) name and path.
pub(crate) fn visible_entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    Ok(sorted_visible(dir)?
        .into_iter()
        .map(|(name, e)| (name.to_string_lossy().into_owned(), e.path()))
        .collect())
}

/// Collects the files under the source tree `dir` that `keep` accepts, depth
/// first in name order, skipping hidden entries and build output folders
/// (`target`, `node_modules`). The error names the folder that could not be
/// read. `celgate test` and `celgate diff` search their paths this way.
pub(crate) fn walk_source_tree(
    dir: &Path,
    keep: &dyn Fn(&Path) -> bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let entries = visible_entries(dir).map_err(|e| (dir.to_path_buf(), e))?;
    for (name, path) in entries {
        if path.is_dir() {
            if name != "target" && name != "node_modules" {
                walk_source_tree(&path, keep, out)?;
            }
        } else if keep(&path) {
            out.push(path);
        }
    }
    Ok(())
}

pub fn is_policy_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The documents of one file. Empty documents (`---` alone, comments only)
/// are dropped; a document that does not parse is an error naming the file
/// and the document.
pub fn read_documents(path: &Path) -> Result<Vec<Document>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    parse_documents(path, &text)
}

/// The documents of a file's text: `.json` files by the JSON grammar (one
/// value, or several one after another), every other file as YAML (which may
/// hold several `---`-separated documents).
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<Document>, LoadError> {
    if is_json(path) {
        parse_json(path, text)
    } else {
        parse_yaml(path, text)
    }
}

fn is_json(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("json")
}

/// JSON is not read as YAML: YAML 1.2 is meant to be a superset, but YAML
/// parsers refuse valid JSON such as a surrogate-pair escape (`"\ud83d\udc31"`,
/// which `json.dumps` writes for any emoji).
fn parse_json(path: &Path, text: &str) -> Result<Vec<Document>, LoadError> {
    // A byte-order mark is allowed to be ignored (RFC 8259, section 8.1).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Strict>();
    let mut index = 0;
    loop {
        let start = stream.byte_offset();
        let Some(next) = stream.next() else { break };
        index += 1;
        let Strict(value) = next.map_err(|e| LoadError::Parse {
            path: path.to_path_buf(),
            document: index,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        // The value starts at the first non-blank byte after the last one.
        let skipped = text[start..]
            .find(|c: char| !c.is_whitespace())
            .map_or(start, |i| start + i);
        docs.push(Document {
            path: path.to_path_buf(),
            index,
            line: text[..skipped].matches('\n').count() + 1,
            value,
        });
    }
    Ok(docs)
}

fn parse_yaml(path: &Path, text: &str) -> Result<Vec<Document>, LoadError> {
    use serde::Deserialize;
    let starts = document_lines(text);
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let Strict(value) = Strict::deserialize(de).map_err(|e| LoadError::Parse {
            path: path.to_path_buf(),
            document: i + 1,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        docs.push(Document {
            path: path.to_path_buf(),
            index: i + 1,
            line: starts.get(i).copied().unwrap_or(1),
            value,
        });
    }
    Ok(docs)
}

/// A document as a JSON value, refusing a key that appears twice in one
/// mapping: both parsers would otherwise keep the last silently, so a second
/// `validations:` would drop the first without a word.
struct Strict(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML or JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Into::into)
            .or_else(|_| u64::try_from(v).map(Into::into))
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Self::Value, E> {
        u64::try_from(v)
            .map(Into::into)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        <Strict as serde::Deserialize>::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(out.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one mapping"
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(out.into())
    }
}

/// The line each YAML document starts on (after a `---` separator).
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    for (n, line) in text.lines().enumerate() {
        if n > 0 && (line == "---" || line.starts_with("--- ")) {
            starts.push(n + 2);
        } else if n == 0 && (line == "---" || line.starts_with("--- ")) {
            starts[0] = 2;
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_read_by_the_json_grammar() {
        let p = Path::new("p.json");
        let text = "\u{feff}{\"a\": \"\\ud83d\\udc31\"}\n\n  {\"b\": 1}\nnull\n";
        let docs = parse_documents(p, text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["a"], "\u{1f431}");
        assert_eq!((docs[0].index, docs[0].line), (1, 1));
        assert_eq!((docs[1].index, docs[1].line), (2, 3));
        // Errors give the line, as YAML's do.
        let e = parse_documents(p, "{\n  \"a\": 1,\n  \"b\" 2\n}").unwrap_err();
        assert!(e.to_string().contains("at line 3"), "{e}");
        // A key twice is an error, in either grammar.
        let e = parse_documents(p, "{\"a\": 1,\n \"a\": 2}").unwrap_err();
        assert!(e.to_string().contains("\"a\" appears twice"), "{e}");
        let y = Path::new("p.yaml");
        let e = parse_documents(y, "spec:\n  a: 1\n  b: 2\n  a: 3\n").unwrap_err();
        assert!(e.to_string().contains("\"a\" appears twice"), "{e}");
        // Numbers, nulls and nesting come through as before.
        let v = &parse_documents(y, "a: [1, -2, 1.5, null, true, {b: x}]\n").unwrap()[0].value;
        assert_eq!(
            v,
            &serde_json::json!({"a": [1, -2, 1.5, null, true, {"b": "x"}]})
        );
        // YAML is not JSON.
        assert!(parse_documents(p, "a: 1\n").is_err());
        assert_eq!(
            parse_documents(Path::new("p.yaml"), "a: 1\n")
                .unwrap()
                .len(),
            1
        );
    }
}
