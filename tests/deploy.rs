//! Static checks of what ships under `deploy/` (no Kubernetes API server, and
//! no kustomize, runs on the build machines):
//!
//! - every kustomization under `deploy/kubernetes` is built by a small
//!   emulation of kustomize (resources, `configMapGenerator`, namespace,
//!   labels, images, JSON patches), refusing any field it does not emulate,
//!   and every file there is used by one;
//! - every built object round-trips through its k8s-openapi type unchanged,
//!   so a misspelt or unknown field (which serde would silently drop) or a
//!   wrong type fails;
//! - the objects agree with one another and with celgate (selectors, ports,
//!   probes, the policies mount, security contexts), the policies ConfigMaps
//!   load with celgate's own loader and are the repository's `policies/`;
//! - the sidecar's Envoy config points at the celgate and app containers of
//!   its pod (`envoy --mode validate` of it: tests/container.rs);
//! - the Istio example names the provider and the Service that exist;
//! - the ClusterRole grants exactly what the Kubernetes source watches.

mod common;

use celgate::policy::{load, PolicySet};
use celgate::sources::kube::{GROUP, KINDS};
use common::{envoy_cluster_address, files_under, port_of, repo_root};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const KUBERNETES: &str = "deploy/kubernetes";
/// The ConfigMap of celgate's policies, in every variant.
const POLICIES_CONFIG_MAP: &str = "celgate-policies";
/// The uid/gid of the image (distroless `nonroot`).
const NONROOT: i64 = 65532;

fn documents_at(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn documents(file: &str) -> Vec<Value> {
    documents_at(&repo_root().join(file))
}

/// A path relative to the repository root, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo_root().canonicalize().unwrap())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------
// A small kustomize: just what the kustomizations here use. Unknown fields
// are refused, so a kustomization never does something this does not check.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: Vec<LabelSet>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    config_map_generator: Vec<Generator>,
    generator_options: Option<GeneratorOptions>,
    #[serde(default)]
    images: Vec<Image>,
    #[serde(default)]
    patches: Vec<Patch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSet {
    pairs: BTreeMap<String, String>,
    #[serde(default)]
    include_selectors: bool,
    #[serde(default)]
    include_templates: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Generator {
    name: String,
    files: Vec<String>,
    options: Option<GeneratorOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GeneratorOptions {
    #[serde(default)]
    disable_name_suffix_hash: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Image {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    path: String,
    target: Target,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    group: Option<String>,
    version: Option<String>,
    kind: String,
    name: Option<String>,
}

/// A ConfigMap made by a `configMapGenerator`.
#[derive(Debug, Clone)]
struct Generated {
    name: String,
    /// Its source files, in order.
    files: Vec<PathBuf>,
    /// Whether kustomize appends a content hash to the name (and to the
    /// references to it). The emulation keeps the plain name on both sides.
    hashed: bool,
}

/// What a kustomization builds to.
struct Build {
    dir: PathBuf,
    objects: Vec<Value>,
    generated: Vec<Generated>,
    /// Every file read: kustomization.yaml, resources, patches, generator files.
    files: BTreeSet<PathBuf>,
}

const CLUSTER_SCOPED: [&str; 5] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ClusterIssuer",
];

/// A file a kustomization names: relative, inside the kustomization's
/// directory (kustomize refuses anything else), and existing.
fn local_file(dir: &Path, entry: &str) -> PathBuf {
    assert!(
        !entry.starts_with('/') && !entry.split('/').any(|c| c == ".."),
        "{}: {entry:?} is outside the kustomization directory; kustomize refuses it",
        shown(dir)
    );
    let path = dir.join(entry);
    assert!(path.is_file(), "{}: {entry:?} does not exist", shown(dir));
    path
}

fn build(dir: &Path) -> Build {
    // `crd-source/../base` and `base` are one directory.
    let dir = &dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", shown(&file)));
    let k: Kustomization =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", shown(&file)));
    assert_eq!(
        k.api_version,
        "kustomize.config.k8s.io/v1beta1",
        "{}",
        shown(&file)
    );
    assert_eq!(k.kind, "Kustomization", "{}", shown(&file));

    let mut out = Build {
        dir: dir.to_path_buf(),
        objects: Vec::new(),
        generated: Vec::new(),
        files: BTreeSet::from([file.clone()]),
    };
    for entry in &k.resources {
        let path = dir.join(entry);
        if path.is_dir() {
            assert!(
                path.join("kustomization.yaml").is_file(),
                "{}: resource {entry:?} is a directory without a kustomization.yaml",
                shown(&file)
            );
            let inner = build(&path);
            out.objects.extend(inner.objects);
            out.generated.extend(inner.generated);
            out.files.extend(inner.files);
        } else {
            let path = local_file(dir, entry);
            out.objects.extend(documents_at(&path));
            out.files.insert(path);
        }
    }

    let global_no_hash = k
        .generator_options
        .as_ref()
        .is_some_and(|o| o.disable_name_suffix_hash);
    for g in &k.config_map_generator {
        let mut data = serde_json::Map::new();
        let mut files = Vec::new();
        for entry in &g.files {
            assert!(
                !entry.contains('='),
                "{}: `key=path` entries are not emulated",
                shown(&file)
            );
            let path = local_file(dir, entry);
            let key = path.file_name().unwrap().to_string_lossy().into_owned();
            let content = std::fs::read_to_string(&path).unwrap();
            assert!(
                data.insert(key.clone(), json!(content)).is_none(),
                "{}: generator {} has two files named {key}",
                shown(&file),
                g.name
            );
            out.files.insert(path.clone());
            files.push(path);
        }
        out.objects.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": g.name},
            "data": data,
        }));
        let no_hash = global_no_hash
            || g.options
                .as_ref()
                .is_some_and(|o| o.disable_name_suffix_hash);
        out.generated.push(Generated {
            name: g.name.clone(),
            files,
            hashed: !no_hash,
        });
    }

    for p in &k.patches {
        let path = local_file(dir, &p.path);
        out.files.insert(path.clone());
        let docs = documents_at(&path);
        assert_eq!(docs.len(), 1, "{}: one document", shown(&path));
        let ops = docs[0].as_array().unwrap_or_else(|| {
            panic!(
                "{}: only JSON patches (a list of operations) are emulated",
                shown(&path)
            )
        });
        let t = &p.target;
        let matches: Vec<usize> = (0..out.objects.len())
            .filter(|&i| {
                let o = &out.objects[i];
                let api = o["apiVersion"].as_str().unwrap_or_default();
                let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
                o["kind"] == t.kind
                    && t.name.as_ref().is_none_or(|n| o["metadata"]["name"] == *n)
                    && t.group.as_ref().is_none_or(|g| g == group)
                    && t.version.as_ref().is_none_or(|v| v == version)
            })
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "{}: the patch target {} {:?} should match exactly one object",
            shown(&file),
            t.kind,
            t.name
        );
        apply_json_patch(&mut out.objects[matches[0]], ops, &shown(&path));
    }

    if let Some(ns) = &k.namespace {
        for o in &mut out.objects {
            if !CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap_or_default()) {
                o["metadata"]["namespace"] = json!(ns);
            }
        }
    }

    for set in &k.labels {
        assert!(
            !set.include_selectors,
            "{}: labels with includeSelectors are not emulated (and selectors are immutable)",
            shown(&file)
        );
        for o in &mut out.objects {
            add_labels(&mut o["metadata"], &set.pairs);
            if set.include_templates && o["spec"]["template"].is_object() {
                add_labels(&mut o["spec"]["template"]["metadata"], &set.pairs);
            }
        }
    }

    for image in &k.images {
        for o in &mut out.objects {
            if !o["spec"]["template"]["spec"].is_object() {
                continue;
            }
            let spec = &mut o["spec"]["template"]["spec"];
            for list in ["initContainers", "containers"] {
                for c in spec
                    .get_mut(list)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let current = c["image"].as_str().unwrap().to_owned();
                    let (name, tag, digest) = split_image(&current);
                    if name != image.name {
                        continue;
                    }
                    let mut new = image.new_name.clone().unwrap_or(name.to_owned());
                    if let Some(d) = image.digest.as_deref().or(digest) {
                        new = format!("{new}@{d}");
                    } else if let Some(t) = image.new_tag.as_deref().or(tag) {
                        new = format!("{new}:{t}");
                    }
                    c["image"] = json!(new);
                }
            }
        }
    }

    let mut ids = BTreeSet::new();
    for o in &out.objects {
        let id = (
            o["kind"].as_str().unwrap_or_default().to_owned(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        assert!(
            !id.2.is_empty(),
            "{}: an object without a name: {o}",
            shown(&file)
        );
        assert!(
            ids.insert(id.clone()),
            "{}: {id:?} is defined twice; kustomize refuses that",
            shown(&file)
        );
    }
    out
}

fn add_labels(metadata: &mut Value, pairs: &BTreeMap<String, String>) {
    for (k, v) in pairs {
        metadata["labels"][k] = json!(v);
    }
}

/// `name[:tag][@digest]` → (name, tag, digest); a `:` before the last `/`
/// is a registry port, not a tag.
fn split_image(image: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    let last = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last..].rfind(':') {
        Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..]), digest),
        None => (rest, None, digest),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// RFC 6902 `test`, `add`, `replace` and `remove`.
fn apply_json_patch(doc: &mut Value, ops: &[Value], origin: &str) {
    for op in ops {
        let kind = op["op"]
            .as_str()
            .unwrap_or_else(|| panic!("{origin}: {op}"));
        let path = op["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{origin}: {op}"));
        let value = op.get("value").cloned();
        match kind {
            "test" => assert_eq!(
                doc.pointer(path),
                value.as_ref(),
                "{origin}: test {path} failed"
            ),
            "replace" => {
                let slot = doc
                    .pointer_mut(path)
                    .unwrap_or_else(|| panic!("{origin}: replace {path}: no such value"));
                *slot = value.unwrap_or_else(|| panic!("{origin}: replace {path}: no value"));
            }
            "add" | "remove" => {
                let (parent, last) = path
                    .rsplit_once('/')
                    .unwrap_or_else(|| panic!("{origin}: bad path {path}"));
                let key = unescape(last);
                let parent = doc
                    .pointer_mut(parent)
                    .unwrap_or_else(|| panic!("{origin}: {kind} {path}: no parent"));
                match (kind, parent) {
                    ("add", Value::Array(a)) => {
                        let v = value.unwrap_or_else(|| panic!("{origin}: add {path}: no value"));
                        if key == "-" {
                            a.push(v);
                        } else {
                            let i: usize = key.parse().unwrap();
                            assert!(i <= a.len(), "{origin}: add {path}: out of range");
                            a.insert(i, v);
                        }
                    }
                    ("add", Value::Object(m)) => {
                        m.insert(
                            key,
                            value.unwrap_or_else(|| panic!("{origin}: add {path}: no value")),
                        );
                    }
                    ("remove", Value::Array(a)) => {
                        let i: usize = key.parse().unwrap();
                        assert!(i < a.len(), "{origin}: remove {path}: out of range");
                        a.remove(i);
                    }
                    ("remove", Value::Object(m)) => {
                        m.remove(&key)
                            .unwrap_or_else(|| panic!("{origin}: remove {path}: no such value"));
                    }
                    _ => panic!("{origin}: {kind} {path}: the parent is not a list or a map"),
                }
            }
            other => panic!("{origin}: op {other:?} is not emulated"),
        }
    }
}

/// Every directory under `deploy/kubernetes` with a kustomization.yaml.
fn kustomization_dirs() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if dir.join("kustomization.yaml").is_file() {
            out.push(dir.to_path_buf());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                walk(&e, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &repo_root().join(KUBERNETES).canonicalize().unwrap(),
        &mut out,
    );
    out
}

fn built(dir: &str) -> Build {
    build(&repo_root().join(KUBERNETES).join(dir))
}

impl Build {
    fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .objects
            .iter()
            .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {kind} {name}",
            shown(&self.dir)
        );
        found[0]
    }

    fn only(&self, kind: &str) -> &Value {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "{}: expected one {kind}", shown(&self.dir));
        found[0]
    }

    fn generated(&self, name: &str) -> &Generated {
        self.generated
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("{}: no configMapGenerator makes {name}", shown(&self.dir)))
    }
}

// ---------------------------------------------------------------------------
// Schema: a round trip through the k8s-openapi type loses nothing.
// ---------------------------------------------------------------------------

/// cert-manager's kinds (cert-manager.io/v1) have no k8s-openapi type: these
/// follow its API reference. Every field of the specs is known (an unknown
/// one is refused); the ones used here are typed, down to the allowed
/// values of key usages and key algorithms.
// Some fields are there to be recognized (and type-checked), not read.
#[allow(dead_code)]
mod cert_manager {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Object<S> {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: S,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CertificateSpec {
        pub secret_name: String,
        pub issuer_ref: IssuerRef,
        pub common_name: Option<String>,
        #[serde(default)]
        pub dns_names: Vec<String>,
        #[serde(default)]
        pub uris: Vec<String>,
        #[serde(default)]
        pub ip_addresses: Vec<String>,
        #[serde(default)]
        pub email_addresses: Vec<String>,
        pub duration: Option<String>,
        pub renew_before: Option<String>,
        pub renew_before_percentage: Option<i32>,
        #[serde(rename = "isCA")]
        pub is_ca: Option<bool>,
        #[serde(default)]
        pub usages: Vec<KeyUsage>,
        pub private_key: Option<PrivateKey>,
        pub subject: Option<Value>,
        pub literal_subject: Option<String>,
        pub other_names: Option<Vec<Value>>,
        pub secret_template: Option<Value>,
        pub keystores: Option<Value>,
        pub additional_output_formats: Option<Vec<Value>>,
        pub name_constraints: Option<Value>,
        pub signature_algorithm: Option<String>,
        pub encode_usages_in_request: Option<bool>,
        pub revision_history_limit: Option<i32>,
    }

    #[derive(Deserialize, PartialEq, Debug)]
    #[serde(deny_unknown_fields)]
    pub struct IssuerRef {
        pub name: String,
        pub kind: Option<String>,
        pub group: Option<String>,
    }

    #[derive(Deserialize, PartialEq, Debug)]
    #[serde(rename_all = "lowercase")]
    pub enum KeyUsage {
        Signing,
        #[serde(rename = "digital signature")]
        DigitalSignature,
        #[serde(rename = "content commitment")]
        ContentCommitment,
        #[serde(rename = "key encipherment")]
        KeyEncipherment,
        #[serde(rename = "key agreement")]
        KeyAgreement,
        #[serde(rename = "data encipherment")]
        DataEncipherment,
        #[serde(rename = "cert sign")]
        CertSign,
        #[serde(rename = "crl sign")]
        CrlSign,
        #[serde(rename = "encipher only")]
        EncipherOnly,
        #[serde(rename = "decipher only")]
        DecipherOnly,
        Any,
        #[serde(rename = "server auth")]
        ServerAuth,
        #[serde(rename = "client auth")]
        ClientAuth,
        #[serde(rename = "code signing")]
        CodeSigning,
        #[serde(rename = "email protection")]
        EmailProtection,
        #[serde(rename = "s/mime")]
        Smime,
        #[serde(rename = "ipsec end system")]
        IpsecEndSystem,
        #[serde(rename = "ipsec tunnel")]
        IpsecTunnel,
        #[serde(rename = "ipsec user")]
        IpsecUser,
        Timestamping,
        #[serde(rename = "ocsp signing")]
        OcspSigning,
        #[serde(rename = "microsoft sgc")]
        MicrosoftSgc,
        #[serde(rename = "netscape sgc")]
        NetscapeSgc,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrivateKey {
        pub algorithm: Option<KeyAlgorithm>,
        pub size: Option<u32>,
        pub encoding: Option<KeyEncoding>,
        pub rotation_policy: Option<RotationPolicy>,
    }

    #[derive(Deserialize, PartialEq, Debug)]
    pub enum KeyAlgorithm {
        #[serde(rename = "RSA")]
        Rsa,
        #[serde(rename = "ECDSA")]
        Ecdsa,
        Ed25519,
    }

    #[derive(Deserialize)]
    pub enum KeyEncoding {
        #[serde(rename = "PKCS1")]
        Pkcs1,
        #[serde(rename = "PKCS8")]
        Pkcs8,
    }

    #[derive(Deserialize, PartialEq, Debug)]
    pub enum RotationPolicy {
        Never,
        Always,
    }

    /// The spec of an Issuer or ClusterIssuer: exactly one kind of issuer.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct IssuerSpec {
        pub self_signed: Option<SelfSigned>,
        pub ca: Option<CaIssuer>,
        pub acme: Option<Value>,
        pub vault: Option<Value>,
        pub venafi: Option<Value>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct SelfSigned {
        #[serde(default)]
        pub crl_distribution_points: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CaIssuer {
        pub secret_name: String,
        #[serde(default)]
        pub crl_distribution_points: Vec<String>,
        #[serde(default)]
        pub ocsp_servers: Vec<String>,
        #[serde(default, rename = "issuingCertificateURLs")]
        pub issuing_certificate_urls: Vec<String>,
    }

    pub trait Spec: DeserializeOwned {
        fn check(&self, origin: &str);
    }

    impl Spec for CertificateSpec {
        fn check(&self, origin: &str) {
            assert!(
                !(self.dns_names.is_empty()
                    && self.uris.is_empty()
                    && self.ip_addresses.is_empty()
                    && self.email_addresses.is_empty()
                    && self.common_name.is_none()
                    && self.literal_subject.is_none()),
                "{origin}: a certificate with no name"
            );
            if let Some(k) = &self.private_key {
                let sizes: &[u32] = match k.algorithm {
                    Some(KeyAlgorithm::Ecdsa) => &[256, 384, 521],
                    Some(KeyAlgorithm::Ed25519) => &[],
                    Some(KeyAlgorithm::Rsa) | None => &[2048, 3072, 4096, 8192],
                };
                if let Some(size) = k.size {
                    assert!(sizes.contains(&size), "{origin}: key size {size}");
                }
            }
            for d in [&self.duration, &self.renew_before].into_iter().flatten() {
                hours(d, origin);
            }
        }
    }

    impl Spec for IssuerSpec {
        fn check(&self, origin: &str) {
            let kinds = [
                self.self_signed.is_some(),
                self.ca.is_some(),
                self.acme.is_some(),
                self.vault.is_some(),
                self.venafi.is_some(),
            ];
            assert_eq!(
                kinds.iter().filter(|k| **k).count(),
                1,
                "{origin}: exactly one kind of issuer"
            );
        }
    }

    /// Deserializes `doc` as a cert-manager object with spec `S` and checks
    /// the spec; panics with the reason otherwise.
    pub fn check<S: Spec>(doc: &Value, origin: &str) {
        let o: Object<S> = serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{origin}: does not match cert-manager's schema: {e}"));
        assert!(o.metadata.name.is_some(), "{origin}: no name");
        o.spec.check(origin);
    }

    /// The objects of `kind` in `b`, typed.
    pub fn all<S: DeserializeOwned>(b: &Build, kind: &str) -> Vec<Object<S>> {
        b.objects
            .iter()
            .filter(|o| o["apiVersion"] == "cert-manager.io/v1" && o["kind"] == kind)
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .collect()
    }

    /// A duration of whole hours (`2160h`), as cert-manager writes them.
    pub fn hours(d: &str, origin: &str) -> u64 {
        d.strip_suffix('h')
            .and_then(|h| h.parse().ok())
            .unwrap_or_else(|| panic!("{origin}: duration {d:?}: use whole hours, e.g. 2160h"))
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> Value {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not match the Kubernetes schema: {e}"));
    serde_json::to_value(&typed).unwrap()
}

/// The first place where `a` and `b` differ, as a path.
fn difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => difference(u, v, &format!("{path}.{k}")),
                (Some(_), None) => Some(format!("{path}.{k} is not a field of the schema")),
                (None, Some(v)) => Some(format!("{path}.{k} appeared as {v}")),
                (None, None) => None,
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| difference(u, v, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

/// Deserializes `doc` into the k8s-openapi type of its kind, serializes it
/// back and asserts nothing changed. Unknown fields are ignored by the
/// deserializer, so they go missing on the way back; a wrong type fails to
/// deserialize. Refuses kinds it has no type for, so nothing goes unchecked.
fn assert_schema(doc: &Value, origin: &str) {
    use k8s_openapi::api::{apps, core, networking, policy, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let origin = format!("{origin}: {kind} {}", doc["metadata"]["name"]);
    let back = match (api, kind) {
        ("v1", "Namespace") => round_trip::<core::v1::Namespace>(doc, &origin),
        ("v1", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(doc, &origin),
        ("v1", "Service") => round_trip::<core::v1::Service>(doc, &origin),
        ("v1", "ConfigMap") => round_trip::<core::v1::ConfigMap>(doc, &origin),
        ("apps/v1", "Deployment") => round_trip::<apps::v1::Deployment>(doc, &origin),
        ("policy/v1", "PodDisruptionBudget") => {
            round_trip::<policy::v1::PodDisruptionBudget>(doc, &origin)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            round_trip::<rbac::v1::ClusterRole>(doc, &origin)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<rbac::v1::ClusterRoleBinding>(doc, &origin)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            round_trip::<networking::v1::NetworkPolicy>(doc, &origin)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<apiextensions::v1::CustomResourceDefinition>(doc, &origin)
        }
        ("cert-manager.io/v1", "Certificate") => {
            cert_manager::check::<cert_manager::CertificateSpec>(doc, &origin);
            return;
        }
        ("cert-manager.io/v1", "Issuer" | "ClusterIssuer") => {
            cert_manager::check::<cert_manager::IssuerSpec>(doc, &origin);
            return;
        }
        _ => panic!("{origin}: no schema known for {api} {kind}; add its k8s-openapi type"),
    };
    if let Some(d) = difference(doc, &back, "") {
        panic!("{origin}: {d}");
    }
}

#[test]
fn schema_check_catches_unknown_fields_and_wrong_types() {
    let good = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"name": "grpc", "port": 9191, "targetPort": "grpc"}]},
    });
    assert_schema(&good, "good");
    let mut misspelt = good.clone();
    misspelt["spec"]["ports"][0]["targetport"] = json!("grpc");
    let wrong_type = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": "9191"}]},
    });
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"},
        "spec": {"secretName": "c", "dnsNames": ["a.example"], "usages": ["server auth"],
                 "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}},
    });
    assert_schema(&certificate, "good");
    let mut cert_misspelt = certificate.clone();
    cert_misspelt["spec"]["dnsName"] = json!(["a.example"]);
    let mut cert_usage = certificate.clone();
    cert_usage["spec"]["usages"] = json!(["serverAuth"]);
    let issuer_two = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "i"},
        "spec": {"selfSigned": {}, "ca": {"secretName": "s"}},
    });
    for (doc, want) in [
        (misspelt, "spec.ports[0].targetport is not a field"),
        (wrong_type, "does not match the Kubernetes schema"),
        (cert_misspelt, "unknown field `dnsName`"),
        (cert_usage, "unknown variant `serverAuth`"),
        (issuer_two, "exactly one kind of issuer"),
    ] {
        let err = std::panic::catch_unwind(|| assert_schema(&doc, "bad")).unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(want), "{msg}");
    }
}

#[test]
fn every_kustomization_builds_to_schema_valid_objects_and_uses_every_file() {
    let dirs = kustomization_dirs();
    let names: Vec<String> = dirs.iter().map(|d| shown(d)).collect();
    for want in [
        "",
        "/base",
        "/crd-source",
        "/sidecar",
        "/tls",
        "/tls/gateway",
    ] {
        assert!(
            names.contains(&format!("{KUBERNETES}{want}")),
            "{KUBERNETES}{want} should be a kustomization; found {names:?}"
        );
    }
    let mut used = BTreeSet::new();
    for dir in &dirs {
        let b = build(dir);
        assert!(!b.objects.is_empty(), "{} builds nothing", shown(dir));
        for o in &b.objects {
            assert_schema(o, &shown(dir));
        }
        used.extend(b.files);
    }
    for file in files_under(&repo_root().join(KUBERNETES)) {
        assert!(
            used.contains(&file),
            "{} is used by no kustomization",
            shown(&file)
        );
    }
    // `kubectl apply -k deploy/kubernetes` is the base as it is.
    let (top, base) = (built(""), built("base"));
    assert_eq!(top.objects, base.objects);
}

#[test]
fn crd_copy_matches_the_kubernetes_schema() {
    let file = "deploy/crds/policies.kyverno.io.yaml";
    for doc in documents(file) {
        assert_schema(&doc, file);
    }
}

// ---------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The value of `--name value` (or `--name=value`).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            Some(
                args.get(i + 1)
                    .unwrap_or_else(|| panic!("{name} without a value"))
                    .as_str(),
            )
        } else {
            a.strip_prefix(name).and_then(|r| r.strip_prefix('='))
        }
    })
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod[*l].as_array().into_iter().flatten())
        .collect()
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container port a probe or Service names (by name or number).
fn container_port(c: &Value, port: &Value) -> i64 {
    let ports = c["ports"].as_array().cloned().unwrap_or_default();
    let found = match port {
        Value::String(name) => ports.iter().find(|p| p["name"] == *name),
        Value::Number(_) => ports.iter().find(|p| p["containerPort"] == *port),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("container {} has no port {port}", c["name"]))["containerPort"]
        .as_i64()
        .unwrap()
}

fn selects(selector: &Value, labels: &Value, what: &str) {
    let selector = selector
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no selector"));
    assert!(
        !selector.is_empty(),
        "{what}: an empty selector selects everything"
    );
    for (k, v) in selector {
        assert_eq!(
            &labels[k], v,
            "{what}: selector {k}={v} does not match the pod labels {labels}"
        );
    }
}

/// Restricted Pod Security Standard, and more: non-root, read-only root
/// filesystem, no privilege escalation, no capabilities, RuntimeDefault
/// seccomp, requests and a memory limit, a pinned image.
fn assert_hardened_pod(pod: &Value, what: &str) {
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["runAsUser"], NONROOT, "{what}");
    assert_eq!(sc["runAsGroup"], NONROOT, "{what}");
    assert_eq!(sc["fsGroup"], NONROOT, "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[key], true, "{what}: {key}");
    }
    for v in pod["volumes"].as_array().into_iter().flatten() {
        assert!(v.get("hostPath").is_none(), "{what}: hostPath volume {v}");
    }
    for c in containers(pod) {
        let what = format!("{what}: container {}", c["name"]);
        let csc = &c["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{what}");
        assert_ne!(csc["privileged"], true, "{what}");
        assert_eq!(csc["capabilities"]["drop"], json!(["ALL"]), "{what}");
        assert!(csc["capabilities"].get("add").is_none(), "{what}");
        assert_ne!(csc["runAsNonRoot"], false, "{what}");
        assert_ne!(csc["runAsUser"], 0, "{what}");
        let r = &c["resources"];
        for (section, key) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            assert!(
                r[section][key].is_string(),
                "{what}: resources.{section}.{key}"
            );
        }
        let image = c["image"].as_str().unwrap();
        let (_, tag, digest) = split_image(image);
        assert!(
            digest.is_some() || tag.is_some_and(|t| t != "latest"),
            "{what}: image {image} is not pinned to a tag or digest"
        );
        assert!(
            c.get("imagePullPolicy").is_some_and(|p| p != "Always"),
            "{what}"
        );
    }
}

/// The files under `policies/` that are policies (not test suites).
fn bundled_policies() -> BTreeMap<String, PathBuf> {
    files_under(&repo_root().join("policies"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".test.yaml"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect()
}

/// A generated policies ConfigMap: made from byte-identical copies of every
/// bundled policy, and loads with celgate's own loader to the same policies
/// with no warnings.
fn assert_policies_config_map(b: &Build, name: &str) {
    let g = b.generated(name);
    assert!(
        !g.hashed,
        "{}: {name} must keep its name (disableNameSuffixHash) so edits hot-reload in place",
        shown(&b.dir)
    );
    let bundled = bundled_policies();
    let names: Vec<String> = g
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        bundled.keys().cloned().collect::<Vec<_>>(),
        "{}: {name} should hold exactly the bundled policies",
        shown(&b.dir)
    );
    for f in &g.files {
        let original = &bundled[&f.file_name().unwrap().to_string_lossy().into_owned()];
        assert!(
            std::fs::read(f).unwrap() == std::fs::read(original).unwrap(),
            "{} differs from {}: copy it again",
            shown(f),
            shown(original)
        );
    }

    let cm = b.get("ConfigMap", name);
    let mut docs = Vec::new();
    for (key, text) in cm["data"].as_object().unwrap() {
        docs.extend(
            load::parse_documents(Path::new(key), text.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{name}/{key}: {e}")),
        );
    }
    let set = PolicySet::compile(docs).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(set.warnings.is_empty(), "{name}: {:?}", set.warnings);
    let reference = PolicySet::load(&bundled.values().cloned().collect::<Vec<_>>()).unwrap();
    let got: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    let want: Vec<&str> = reference.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(got, want, "{name}");
    assert!(set.same_documents(&reference), "{name}");
}

/// celgate's container: `serve`, its policies from the generated ConfigMap
/// mounted read-only as a directory at `--policies`, probes on its HTTP
/// port. Returns its `--grpc-addr`.
fn assert_celgate_container(b: &Build, pod: &Value, c: &Value, what: &str) -> String {
    let (image, _, _) = split_image(c["image"].as_str().unwrap());
    assert_eq!(image, "celgate", "{what}");
    assert!(
        c.get("command").is_none(),
        "{what}: the image's entrypoint runs celgate"
    );
    let args = strings(&c["args"]);
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{what}");
    assert_eq!(flag(&args, "--log-format"), Some("json"), "{what}");

    let dir = flag(&args, "--policies").unwrap_or_else(|| panic!("{what}: no --policies"));
    let mounts: Vec<&Value> = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["mountPath"] == dir)
        .collect();
    assert_eq!(mounts.len(), 1, "{what}: one mount at --policies {dir}");
    let mount = mounts[0];
    assert_eq!(mount["readOnly"], true, "{what}: {mount}");
    assert!(
        mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
        "{what}: a subPath mount is never updated, so policies would not hot-reload"
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{what}: no volume {}", mount["name"]));
    assert_eq!(volume["configMap"]["name"], POLICIES_CONFIG_MAP, "{what}");
    assert!(
        volume["configMap"].get("items").is_none(),
        "{what}: every key of the ConfigMap is a policy"
    );
    assert_policies_config_map(b, POLICIES_CONFIG_MAP);

    let http = i64::from(port_of(
        flag(&args, "--http-addr").unwrap_or_else(|| panic!("{what}: no --http-addr")),
    ));
    for (probe, paths) in [
        ("startupProbe", &["/livez", "/readyz"][..]),
        ("livenessProbe", &["/livez"][..]),
        ("readinessProbe", &["/readyz"][..]),
    ] {
        let get = &c[probe]["httpGet"];
        assert!(
            paths.contains(&get["path"].as_str().unwrap_or_default()),
            "{what}: {probe} should GET one of {paths:?}, not {}",
            get["path"]
        );
        assert_eq!(
            container_port(c, &get["port"]),
            http,
            "{what}: {probe} port"
        );
    }
    for hook in ["preStop", "postStart"] {
        assert!(
            c["lifecycle"][hook]["exec"].is_null(),
            "{what}: the image has no shell to exec a {hook} hook in"
        );
    }
    flag(&args, "--grpc-addr")
        .unwrap_or_else(|| panic!("{what}: no --grpc-addr"))
        .to_owned()
}

// ---------------------------------------------------------------------------
// The base
// ---------------------------------------------------------------------------

#[test]
fn base_deployment_is_hardened_and_serves_the_bundled_policies() {
    let b = built("base");
    let d = b.get("Deployment", "celgate");
    let spec = &d["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(spec["replicas"], 3);
    selects(
        &spec["selector"]["matchLabels"],
        labels,
        "Deployment selector",
    );
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "Envoy does not fail open: a rollout must not lower capacity"
    );
    let spread = pod["topologySpreadConstraints"].as_array().unwrap();
    assert!(spread
        .iter()
        .any(|t| t["topologyKey"] == "kubernetes.io/hostname"));
    for t in spread {
        selects(
            &t["labelSelector"]["matchLabels"],
            labels,
            "topology spread",
        );
    }

    assert_hardened_pod(pod, "base");
    let c = container(pod, "celgate");
    let grpc = assert_celgate_container(&b, pod, c, "base");
    let addr: SocketAddr = grpc.parse().unwrap();
    assert!(addr.ip().is_unspecified(), "other pods call it: {grpc}");
    assert_eq!(container_port(c, &json!("grpc")), i64::from(addr.port()));
    let args = strings(&c["args"]);
    assert!(
        !args.contains(&"--kube".to_owned()),
        "the base reads files only"
    );

    let delay: i64 = flag(&args, "--shutdown-delay-s")
        .expect("--shutdown-delay-s")
        .parse()
        .unwrap();
    assert!(delay > 0);
    assert!(
        pod["terminationGracePeriodSeconds"].as_i64().unwrap() > delay + 5,
        "the grace period must cover the shutdown delay and the drain"
    );

    // No API access: no token, from the ServiceAccount or the pod.
    let sa = b.only("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert_eq!(pod["automountServiceAccountToken"], false);

    // Everything in the one namespace the Namespace object creates.
    let ns = b.only("Namespace")["metadata"]["name"].clone();
    for o in &b.objects {
        if !CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap()) {
            assert_eq!(o["metadata"]["namespace"], ns, "{}", o["metadata"]["name"]);
        }
    }
    assert_eq!(
        b.only("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

#[test]
fn base_service_and_pdb_select_the_pods_and_name_their_ports() {
    let b = built("base");
    let d = b.get("Deployment", "celgate");
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let c = container(&d["spec"]["template"]["spec"], "celgate");
    let args = strings(&c["args"]);

    let svc = b.get("Service", "celgate");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    selects(&svc["spec"]["selector"], labels, "Service");
    let ports = svc["spec"]["ports"].as_array().unwrap();
    let by_name = |n: &str| {
        ports
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("Service port {n}"))
    };
    let grpc = by_name("grpc");
    assert_eq!(grpc["port"], 9191);
    assert_eq!(grpc["appProtocol"], "grpc");
    assert_eq!(
        container_port(c, &grpc["targetPort"]),
        i64::from(port_of(flag(&args, "--grpc-addr").unwrap()))
    );
    let http = by_name("http");
    assert_eq!(http["port"], 9192);
    assert_eq!(
        container_port(c, &http["targetPort"]),
        i64::from(port_of(flag(&args, "--http-addr").unwrap()))
    );
    for p in ports {
        container_port(c, &p["targetPort"]);
    }

    // The headless Service: the same pods, the gRPC port, no cluster IP.
    let headless = b.get("Service", "celgate-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["selector"], svc["spec"]["selector"]);
    assert_eq!(headless["spec"]["ports"], serde_json::json!([grpc]));

    let pdb = b.get("PodDisruptionBudget", "celgate");
    selects(&pdb["spec"]["selector"]["matchLabels"], labels, "PDB");
    assert_eq!(
        pdb["spec"]["selector"], d["spec"]["selector"],
        "the PDB covers exactly the Deployment's pods"
    );
    let replicas = d["spec"]["replicas"].as_i64().unwrap();
    let may_go = match (
        pdb["spec"]["maxUnavailable"].as_i64(),
        pdb["spec"]["minAvailable"].as_i64(),
    ) {
        (Some(n), None) => n,
        (None, Some(n)) => replicas - n,
        other => panic!("the PDB should set one integer bound, not {other:?}"),
    };
    assert!(may_go >= 1, "a drain must be able to evict a pod");
    assert!(replicas - may_go >= 2, "two pods must stay through a drain");

    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    if annotations["prometheus.io/scrape"] == "true" {
        assert_eq!(
            annotations["prometheus.io/port"],
            json!(container_port(c, &json!("http")).to_string())
        );
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }
}

// ---------------------------------------------------------------------------
// The crd-source overlay and the RBAC of the Kubernetes source
// ---------------------------------------------------------------------------

#[test]
fn crd_source_adds_kube_and_a_token_for_a_read_only_service_account() {
    let (base, b) = (built("base"), built("crd-source"));
    let d = b.get("Deployment", "celgate");
    let pod = &d["spec"]["template"]["spec"];
    let c = container(pod, "celgate");
    let base_c = container(
        &base.get("Deployment", "celgate")["spec"]["template"]["spec"],
        "celgate",
    );
    let mut want = strings(&base_c["args"]);
    want.push("--kube".into());
    assert_eq!(strings(&c["args"]), want, "the base's arguments and --kube");
    // PolicyExceptions count in celgate's own namespace, from the downward API.
    assert_eq!(
        c["env"],
        json!([{"name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}])
    );
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_hardened_pod(pod, "crd-source");
    assert_celgate_container(&b, pod, c, "crd-source");

    // Everything else is the base's, unchanged.
    for o in &base.objects {
        if o["kind"] != "Deployment" {
            assert!(b.objects.contains(o), "changed: {}", o["metadata"]["name"]);
        }
    }

    let sa = b.only("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let binding = b.only("ClusterRoleBinding");
    let role = b.only("ClusterRole");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        json!([{
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }])
    );
}

#[test]
fn rbac_grants_read_access_to_the_watched_resources_only() {
    let docs = documents("deploy/kubernetes/crd-source/rbac.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ClusterRole", "ClusterRoleBinding"]);
    let role = &docs[0];
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["apiGroups"], json!([GROUP]));
    let plurals: Vec<&str> = KINDS.iter().map(|(_, p)| *p).collect();
    assert_eq!(rules[0]["resources"], json!(plurals));
    assert_eq!(rules[0]["verbs"], json!(["get", "list", "watch"]));
    assert!(rules[0].get("resourceNames").is_none());
}

#[test]
fn crd_copy_defines_both_kinds_with_one_storage_version() {
    let docs = documents("deploy/crds/policies.kyverno.io.yaml");
    assert_eq!(docs.len(), 2);
    for (doc, (kind, plural)) in docs.iter().zip(KINDS) {
        assert_eq!(doc["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(doc["kind"], "CustomResourceDefinition");
        assert_eq!(doc["metadata"]["name"], format!("{plural}.{GROUP}"));
        assert_eq!(doc["spec"]["group"], GROUP);
        assert_eq!(doc["spec"]["names"]["kind"], kind);
        assert_eq!(doc["spec"]["names"]["plural"], plural);
        let versions = doc["spec"]["versions"].as_array().unwrap();
        let served: Vec<&str> = versions
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(
            served.contains(&"v1alpha1"),
            "the default --kube-api-version is served"
        );
        assert_eq!(versions.iter().filter(|v| v["storage"] == true).count(), 1);
        for v in versions {
            let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
            assert_eq!(spec["type"], "object");
        }
    }
}

// ---------------------------------------------------------------------------
// Policy copies
// ---------------------------------------------------------------------------

#[test]
fn policy_copies_stay_identical_to_the_bundled_policies() {
    let bundled = bundled_policies();
    let mut copies = 0;
    for file in files_under(&repo_root().join(KUBERNETES)) {
        if file.parent().unwrap().file_name().unwrap() != "policies"
            || file.file_name().unwrap() == "kustomization.yaml"
        {
            continue;
        }
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let original = bundled
            .get(&name)
            .unwrap_or_else(|| panic!("{} is not a bundled policy", shown(&file)));
        assert!(
            std::fs::read(&file).unwrap() == std::fs::read(original).unwrap(),
            "{} differs from {}: copy it again",
            shown(&file),
            shown(original)
        );
        copies += 1;
    }
    assert_eq!(
        copies,
        bundled.len(),
        "one copy, in policies/, shared by base/ and sidecar/"
    );
    for dir in ["base", "sidecar"] {
        assert_policies_config_map(&built(dir), POLICIES_CONFIG_MAP);
    }
}

// ---------------------------------------------------------------------------
// The sidecar variant
// ---------------------------------------------------------------------------

/// The `socket_address` of the one endpoint of Envoy cluster `name`.
#[test]
fn sidecar_pod_wires_envoy_to_celgate_and_the_app_on_loopback() {
    let b = built("sidecar");
    let d = b.only("Deployment");
    let pod = &d["spec"]["template"]["spec"];
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    selects(
        &d["spec"]["selector"]["matchLabels"],
        labels,
        "Deployment selector",
    );
    assert_hardened_pod(pod, "sidecar");
    assert_eq!(pod["automountServiceAccountToken"], false);

    let all = containers(pod);
    assert_eq!(all.len(), 3, "the app, Envoy and celgate");
    let is = |c: &&Value, image: &str| split_image(c["image"].as_str().unwrap()).0 == image;
    let envoy = *all
        .iter()
        .find(|c| is(c, "envoyproxy/envoy"))
        .expect("Envoy");
    let celgate = *all.iter().find(|c| is(c, "celgate")).expect("celgate");
    let app = *all
        .iter()
        .find(|c| !is(c, "envoyproxy/envoy") && !is(c, "celgate"))
        .expect("the app");
    // celgate as a native sidecar must keep running, not run to completion.
    if let Some(init) = pod["initContainers"].as_array() {
        for c in init {
            assert_eq!(c["restartPolicy"], "Always", "init container {}", c["name"]);
        }
    }

    let grpc = assert_celgate_container(&b, pod, celgate, "sidecar celgate");
    assert_eq!(
        grpc, "127.0.0.1:9191",
        "celgate's gRPC stays inside the pod"
    );
    assert!(
        strings(&celgate["args"]).iter().all(|a| a != "--kube"),
        "the sidecar reads files only"
    );

    // Envoy's config, as the pod sees it: the file its args name, in the
    // ConfigMap mounted at that file's directory.
    let args = strings(&envoy["args"]);
    let path = flag(&args, "--config-path")
        .or_else(|| flag(&args, "-c"))
        .expect("Envoy's --config-path");
    let (dir, file) = path.rsplit_once('/').unwrap();
    let mount = envoy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm_name = volume["configMap"]["name"].as_str().unwrap();
    let g = b.generated(cm_name);
    assert!(
        g.hashed,
        "a config Envoy reads once should roll the pods when it changes"
    );
    let text = b.get("ConfigMap", cm_name)["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("{cm_name} has no key {file}"))
        .to_owned();

    // `envoy --mode validate` of this file: tests/container.rs, with every
    // Envoy config shipped.
    let config: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(
        config["admin"]["address"]["socket_address"]["address"], "127.0.0.1",
        "the admin API stays inside the pod"
    );
    let listeners = config["static_resources"]["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    let listen = &listeners[0]["address"]["socket_address"];
    let listen_port = listen["port_value"].as_i64().unwrap();
    assert_eq!(
        container_port(envoy, &json!(listen_port)),
        listen_port,
        "Envoy's listener is a declared container port"
    );
    let hcm = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array().unwrap();
    assert_eq!(
        filters[0]["name"], "envoy.filters.http.ext_authz",
        "checked first"
    );
    let authz = &filters[0]["typed_config"];
    assert_eq!(authz["failure_mode_allow"], false);
    assert!(authz["with_request_body"]["max_request_bytes"].is_u64());
    let authz_cluster = authz["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .unwrap();
    let (host, port) = envoy_cluster_address(&config, authz_cluster);
    assert_eq!(
        format!("{host}:{port}"),
        grpc,
        "ext_authz calls celgate's --grpc-addr"
    );

    let app_port = container_port(app, &app["ports"][0]["name"]);
    let routes: Vec<&Value> = hcm["route_config"]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["routes"].as_array().unwrap())
        .collect();
    assert!(!routes.is_empty());
    for r in routes {
        let cluster = r["route"]["cluster"]
            .as_str()
            .expect("a route to a cluster");
        assert_eq!(
            envoy_cluster_address(&config, cluster),
            ("127.0.0.1".to_owned(), u16::try_from(app_port).unwrap()),
            "Envoy routes to the app container's port"
        );
    }

    // Envoy: its own user, somewhere writable, probes on its listener.
    assert_eq!(envoy["securityContext"]["runAsUser"], 101);
    let tmp_mount = envoy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/tmp")
        .expect("a writable /tmp for Envoy");
    let tmp_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == tmp_mount["name"])
        .unwrap();
    assert!(tmp_volume["emptyDir"].is_object());
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &envoy[probe];
        let port = p["httpGet"]["port"].clone();
        let port = if port.is_null() {
            p["tcpSocket"]["port"].clone()
        } else {
            port
        };
        assert_eq!(container_port(envoy, &port), listen_port, "Envoy's {probe}");
    }

    // Clients reach the pod through Envoy's port only.
    let svc = b.only("Service");
    selects(&svc["spec"]["selector"], labels, "Service");
    for p in svc["spec"]["ports"].as_array().unwrap() {
        assert_eq!(container_port(envoy, &p["targetPort"]), listen_port);
    }
    let np = b.only("NetworkPolicy");
    selects(
        &np["spec"]["podSelector"]["matchLabels"],
        labels,
        "NetworkPolicy",
    );
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    let allowed: Vec<&Value> = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["ports"].as_array().expect("ingress limited to ports"))
        .collect();
    assert_eq!(allowed, [&json!({"port": listen_port, "protocol": "TCP"})]);
}

// ---------------------------------------------------------------------------
// Istio
// ---------------------------------------------------------------------------

#[test]
fn istio_provider_names_the_base_service_and_the_policy_uses_it() {
    let provider_docs = documents("deploy/istio/extension-provider.yaml");
    assert_eq!(provider_docs.len(), 1);
    let operator = &provider_docs[0];
    assert_eq!(operator["apiVersion"], "install.istio.io/v1alpha1");
    assert_eq!(operator["kind"], "IstioOperator");
    let providers = operator["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap();

    let policy_docs = documents("deploy/istio/authorization-policy.yaml");
    assert_eq!(policy_docs.len(), 1);
    let policy = &policy_docs[0];
    assert_eq!(policy["apiVersion"], "security.istio.io/v1");
    assert_eq!(policy["kind"], "AuthorizationPolicy");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert!(!policy["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .is_empty());
    assert!(!policy["spec"]["rules"].as_array().unwrap().is_empty());
    let name = &policy["spec"]["provider"]["name"];
    let provider = providers
        .iter()
        .find(|p| p["name"] == *name)
        .unwrap_or_else(|| panic!("no extension provider named {name}"));

    // The fields of Istio's EnvoyExternalAuthorizationGrpcProvider and
    // EnvoyExternalAuthorizationRequestBody (istio/api mesh/v1alpha1/config.proto):
    // istiod ignores a misspelt one.
    let grpc = provider["envoyExtAuthzGrpc"]
        .as_object()
        .expect("a gRPC provider");
    for key in grpc.keys() {
        assert!(
            [
                "service",
                "port",
                "timeout",
                "failOpen",
                "statusOnError",
                "includeRequestBodyInCheck"
            ]
            .contains(&key.as_str()),
            "envoyExtAuthzGrpc has no field {key}"
        );
    }
    let body = grpc["includeRequestBodyInCheck"].as_object().unwrap();
    for key in body.keys() {
        assert!(
            ["maxRequestBytes", "allowPartialMessage", "packAsBytes"].contains(&key.as_str()),
            "includeRequestBodyInCheck has no field {key}"
        );
    }
    assert_eq!(grpc["failOpen"], false);
    assert_eq!(body["maxRequestBytes"], 8192);
    assert_eq!(body["allowPartialMessage"], true);

    let b = built("base");
    let svc = b.get("Service", "celgate");
    assert_eq!(
        grpc["service"],
        format!(
            "{}.{}.svc.cluster.local",
            svc["metadata"]["name"].as_str().unwrap(),
            svc["metadata"]["namespace"].as_str().unwrap()
        )
    );
    let svc_grpc = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["appProtocol"] == "grpc")
        .unwrap();
    assert_eq!(grpc["port"], svc_grpc["port"]);
}

// ---------------------------------------------------------------------------
// The TLS overlay (cert-manager) and its Envoy gateway
// ---------------------------------------------------------------------------

type Certificate = cert_manager::Object<cert_manager::CertificateSpec>;
type Issuer = cert_manager::Object<cert_manager::IssuerSpec>;

fn certificate_for(b: &Build, secret: &str) -> Certificate {
    let mut found: Vec<Certificate> =
        cert_manager::all::<cert_manager::CertificateSpec>(b, "Certificate")
            .into_iter()
            .filter(|c| c.spec.secret_name == secret)
            .collect();
    assert_eq!(
        found.len(),
        1,
        "{}: one Certificate writes {secret}",
        shown(&b.dir)
    );
    found.remove(0)
}

/// The mount of a Secret volume at `dir` in container `c`: the Secret's name.
fn secret_mounted_at(pod: &Value, c: &Value, dir: &str, what: &str) -> String {
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("{what}: nothing mounted at {dir}"));
    assert_eq!(mount["readOnly"], true, "{what}: {mount}");
    assert!(
        mount.get("subPath").is_none(),
        "{what}: a subPath mount is never updated when the Secret is renewed"
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let mode = volume["secret"]["defaultMode"].as_i64().unwrap_or(0o644);
    assert_eq!(mode & 0o007, 0, "{what}: the private key is world-readable");
    volume["secret"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {dir} is not a Secret volume"))
        .to_owned()
}

/// The ClusterIssuer a Certificate names, and that it is a CA whose own
/// certificate (isCA) comes from cert-manager in the same build.
fn assert_ca_issuer(b: &Build, cert: &Certificate, what: &str) {
    let r = &cert.spec.issuer_ref;
    assert_eq!(r.kind.as_deref(), Some("ClusterIssuer"), "{what}: {r:?}");
    assert!(r.group.as_deref().is_none_or(|g| g == "cert-manager.io"));
    let issuers: Vec<Issuer> = cert_manager::all(b, "ClusterIssuer");
    let issuer = issuers
        .iter()
        .find(|i| i.metadata.name.as_deref() == Some(&r.name))
        .unwrap_or_else(|| panic!("{what}: no ClusterIssuer {}", r.name));
    let ca = issuer.spec.ca.as_ref().expect("a CA issuer");
    let ca_cert = certificate_for(b, &ca.secret_name);
    assert_eq!(ca_cert.spec.is_ca, Some(true), "{what}: the CA certificate");
    // A ClusterIssuer reads its CA from cert-manager's own namespace.
    assert_eq!(
        ca_cert.metadata.namespace.as_deref(),
        Some("cert-manager"),
        "{what}"
    );
    let root = issuers
        .iter()
        .find(|i| i.metadata.name.as_deref() == Some(&ca_cert.spec.issuer_ref.name))
        .expect("the CA certificate's issuer");
    assert!(
        root.spec.self_signed.is_some(),
        "{what}: a self-signed root"
    );
    assert_ne!(root.metadata.name.as_deref(), Some(r.name.as_str()));
}

/// The renewal comes well before the end.
fn assert_renewed_in_time(cert: &Certificate, what: &str) {
    let duration = cert_manager::hours(cert.spec.duration.as_deref().unwrap(), what);
    let before = cert_manager::hours(cert.spec.renew_before.as_deref().unwrap(), what);
    assert!(before * 4 >= duration && before < duration, "{what}");
    let key = cert.spec.private_key.as_ref().unwrap();
    assert_eq!(
        key.rotation_policy,
        Some(cert_manager::RotationPolicy::Always),
        "{what}: a new key at each renewal"
    );
}

/// celgate's flags from the overlay: (value of `flag`, all of them).
fn tls_flags(c: &Value) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let args = strings(&c["args"]);
    let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in &args {
        if let Some((k, v)) = a.split_once('=').filter(|(k, _)| k.starts_with("--tls-")) {
            flags.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    (flags, args)
}

#[test]
fn tls_overlay_serves_grpc_with_a_cert_manager_certificate_and_requires_client_certificates() {
    let (base, b) = (built("base"), built("tls"));
    let d = b.get("Deployment", "celgate");
    let pod = &d["spec"]["template"]["spec"];
    let c = container(pod, "celgate");
    assert_hardened_pod(pod, "tls");
    // Probes stay on the plaintext HTTP listener.
    assert_celgate_container(&b, pod, c, "tls");
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(
            c[probe]["httpGet"]["scheme"]
                .as_str()
                .is_none_or(|s| s == "HTTP"),
            "tls: {probe}: the HTTP listener is plaintext"
        );
    }

    // The base's arguments, then the TLS flags.
    let base_c = container(
        &base.get("Deployment", "celgate")["spec"]["template"]["spec"],
        "celgate",
    );
    let (flags, args) = tls_flags(c);
    let base_args = strings(&base_c["args"]);
    assert_eq!(args[..base_args.len()], base_args[..]);
    assert_eq!(args.len(), base_args.len() + 4, "{args:?}");

    // The files are the keys cert-manager writes, in the mounted Secret of
    // the serving Certificate.
    let file = |flag: &str| {
        let v = &flags[flag];
        assert_eq!(v.len(), 1, "{flag}");
        v[0].rsplit_once('/')
            .map(|(d, f)| (d.to_owned(), f.to_owned()))
            .unwrap()
    };
    let (dir, cert_file) = file("--tls-cert");
    assert_eq!(cert_file, "tls.crt");
    assert_eq!(file("--tls-key"), (dir.clone(), "tls.key".to_owned()));
    assert_eq!(file("--tls-client-ca"), (dir.clone(), "ca.crt".to_owned()));
    let secret = secret_mounted_at(pod, c, &dir, "tls");
    let serving = certificate_for(&b, &secret);
    assert_eq!(serving.metadata.namespace.as_deref(), Some("celgate"));
    assert!(serving
        .spec
        .usages
        .contains(&cert_manager::KeyUsage::ServerAuth));
    assert_ca_issuer(&b, &serving, "celgate's certificate");
    assert_renewed_in_time(&serving, "celgate's certificate");
    // Every name Envoy may reach celgate by: both Services.
    for svc in ["celgate", "celgate-headless"] {
        let s = b.get("Service", svc);
        let name = format!(
            "{}.{}.svc.cluster.local",
            svc,
            s["metadata"]["namespace"].as_str().unwrap()
        );
        assert!(
            serving.spec.dns_names.contains(&name),
            "celgate's certificate lacks {name}"
        );
    }

    // The allow-list parses as celgate parses it.
    let sans = &flags["--tls-client-san"];
    assert!(!sans.is_empty());
    for san in sans {
        celgate::server::tls::SanPattern::parse(san).unwrap_or_else(|e| panic!("{san}: {e}"));
    }

    // Everything else is the base's, unchanged.
    for o in &base.objects {
        if o["kind"] != "Deployment" {
            assert!(b.objects.contains(o), "changed: {}", o["metadata"]["name"]);
        }
    }
}

#[test]
fn tls_gateway_calls_celgate_with_a_client_certificate_it_admits() {
    let (t, g) = (built("tls"), built("tls/gateway"));
    let d = g.get("Deployment", "envoy");
    let pod = &d["spec"]["template"]["spec"];
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    assert_hardened_pod(pod, "gateway");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let ns = g.only("Namespace")["metadata"]["name"].as_str().unwrap();
    let sa = g.only("ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let envoy = container(pod, "envoy");

    // The client certificate names the pod's ServiceAccount, which celgate
    // admits, and comes from the CA that signed celgate's.
    let client = cert_manager::all::<cert_manager::CertificateSpec>(&g, "Certificate");
    assert_eq!(client.len(), 1);
    let client = &client[0];
    let spiffe = format!(
        "spiffe://cluster.local/ns/{ns}/sa/{}",
        sa["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(client.spec.uris, std::slice::from_ref(&spiffe));
    assert!(client
        .spec
        .usages
        .contains(&cert_manager::KeyUsage::ClientAuth));
    assert_renewed_in_time(client, "the gateway's certificate");
    let celgate_pod = &t.get("Deployment", "celgate")["spec"]["template"]["spec"];
    let (flags, _) = tls_flags(container(celgate_pod, "celgate"));
    assert!(
        flags["--tls-client-san"].iter().any(|p| {
            match p.strip_suffix('*') {
                Some(prefix) => spiffe.starts_with(prefix),
                None => *p == spiffe,
            }
        }),
        "celgate's --tls-client-san does not admit {spiffe}"
    );
    let serving = certificate_for(&t, "celgate-tls");
    assert_eq!(client.spec.issuer_ref, serving.spec.issuer_ref);
    assert_ca_issuer(&t, client, "the gateway's certificate");

    // Envoy's config, from the ConfigMap mounted at its --config-path.
    let args = strings(&envoy["args"]);
    let path = flag(&args, "--config-path").expect("--config-path");
    let (config_dir, file) = path.rsplit_once('/').unwrap();
    let mount = envoy["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == config_dir)
        .unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm_name = volume["configMap"]["name"].as_str().unwrap();
    assert!(g.generated(cm_name).hashed, "an edit rolls the pods");
    let data = &g.get("ConfigMap", cm_name)["data"];
    let yaml_of = |key: &str| -> Value {
        serde_yaml_ng::from_str(
            data[key]
                .as_str()
                .unwrap_or_else(|| panic!("{cm_name} has no key {key}")),
        )
        .unwrap()
    };
    let config = yaml_of(file);
    assert_eq!(
        config["admin"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    let listener = &config["static_resources"]["listeners"][0];
    let listen_port = listener["address"]["socket_address"]["port_value"]
        .as_i64()
        .unwrap();
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let authz = &hcm["http_filters"][0];
    assert_eq!(authz["name"], "envoy.filters.http.ext_authz");
    assert_eq!(authz["typed_config"]["failure_mode_allow"], false);
    let cluster_name = authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .unwrap();

    // It calls celgate's headless Service on the gRPC port...
    let (host, port) = envoy_cluster_address(&config, cluster_name);
    let headless = t.get("Service", "celgate-headless");
    assert_eq!(
        host,
        format!(
            "celgate-headless.{}.svc.cluster.local",
            headless["metadata"]["namespace"].as_str().unwrap()
        )
    );
    assert_eq!(headless["spec"]["ports"][0]["port"], i64::from(port));
    let cluster = config["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster_name)
        .unwrap();
    assert_eq!(cluster["type"], "STRICT_DNS", "spread over every pod");

    // ... over TLS, checking celgate's certificate for a name it has ...
    let tls = &cluster["transport_socket"]["typed_config"];
    assert_eq!(
        tls["@type"],
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    );
    let sni = tls["sni"].as_str().unwrap();
    assert!(serving.spec.dns_names.iter().any(|n| n == sni), "{sni}");
    let common = &tls["common_tls_context"];
    assert_eq!(common["alpn_protocols"], json!(["h2"]));

    // ... with its SDS files in the ConfigMap, naming the files of the
    // mounted client Secret, reloaded when that directory changes.
    let secret_dir = |source: &Value| -> (Value, String) {
        let sds = &source["sds_config"]["path_config_source"];
        let path = sds["path"].as_str().unwrap();
        let (dir, key) = path.rsplit_once('/').unwrap();
        assert_eq!(dir, config_dir, "{path}: in the ConfigMap");
        let resources = yaml_of(key)["resources"].clone();
        assert_eq!(resources.as_array().unwrap().len(), 1);
        let r = &resources[0];
        assert_eq!(r["name"], source["name"]);
        (
            r.clone(),
            sds["watched_directory"]["path"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    let certs = common["tls_certificate_sds_secret_configs"]
        .as_array()
        .unwrap();
    assert_eq!(certs.len(), 1);
    let (cert_secret, watched) = secret_dir(&certs[0]);
    let (ca_secret, watched_too) = secret_dir(&common["validation_context_sds_secret_config"]);
    assert_eq!(watched, watched_too);
    assert_eq!(
        secret_mounted_at(pod, envoy, &watched, "gateway"),
        client.spec.secret_name,
        "the watched directory is the client certificate's Secret"
    );
    let in_secret = |v: &Value, key: &str| {
        assert_eq!(v["filename"], format!("{watched}/{key}"));
    };
    in_secret(
        &cert_secret["tls_certificate"]["certificate_chain"],
        "tls.crt",
    );
    in_secret(&cert_secret["tls_certificate"]["private_key"], "tls.key");
    let validation = &ca_secret["validation_context"];
    in_secret(&validation["trusted_ca"], "ca.crt");
    assert_eq!(
        validation["match_typed_subject_alt_names"],
        json!([{"san_type": "DNS", "matcher": {"exact": sni}}])
    );

    // The Service reaches Envoy's listener.
    let svc = g.only("Service");
    selects(&svc["spec"]["selector"], labels, "Service");
    selects(
        &d["spec"]["selector"]["matchLabels"],
        labels,
        "Deployment selector",
    );
    for p in svc["spec"]["ports"].as_array().unwrap() {
        assert_eq!(container_port(envoy, &p["targetPort"]), listen_port);
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container_port(envoy, &envoy[probe]["tcpSocket"]["port"]),
            listen_port
        );
    }
}

#[test]
fn istio_mesh_mtls_is_strict_and_admits_named_callers_on_the_grpc_port() {
    let docs = documents("deploy/istio/mesh-mtls.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["PeerAuthentication", "AuthorizationPolicy"]);
    let b = built("base");
    let d = b.get("Deployment", "celgate");
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let ns = &d["metadata"]["namespace"];
    let c = container(&d["spec"]["template"]["spec"], "celgate");
    let grpc = container_port(c, &json!("grpc"));
    // The fields of Istio's security.istio.io/v1 kinds used here (istiod
    // ignores a misspelt one).
    let known = |v: &Value, fields: &[&str], what: &str| {
        for key in v.as_object().unwrap().keys() {
            assert!(fields.contains(&key.as_str()), "{what} has no field {key}");
        }
    };
    for doc in &docs {
        assert_eq!(doc["apiVersion"], "security.istio.io/v1");
        assert_eq!(&doc["metadata"]["namespace"], ns);
        selects(
            &doc["spec"]["selector"]["matchLabels"],
            labels,
            "Istio selector",
        );
    }
    let peer = &docs[0]["spec"];
    known(
        peer,
        &["selector", "mtls", "portLevelMtls"],
        "PeerAuthentication",
    );
    assert_eq!(peer["mtls"], json!({"mode": "STRICT"}));
    assert!(
        peer.get("portLevelMtls").is_none(),
        "no port left in plaintext"
    );

    let policy = &docs[1]["spec"];
    known(
        policy,
        &["selector", "action", "rules", "provider", "targetRefs"],
        "AuthorizationPolicy",
    );
    assert_eq!(policy["action"], "ALLOW");
    let rules = policy["rules"].as_array().unwrap();
    assert!(!rules.is_empty());
    for rule in rules {
        known(rule, &["from", "to", "when"], "rule");
        let principals: Vec<&Value> = rule["from"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["source"]["principals"].as_array().unwrap())
            .collect();
        assert!(!principals.is_empty(), "callers are named");
        for p in principals {
            let p = p.as_str().unwrap();
            let parts: Vec<&str> = p.split('/').collect();
            assert!(
                parts.len() == 5 && parts[1] == "ns" && parts[3] == "sa" && !p.contains('*'),
                "{p}: one service account, trust-domain/ns/NAMESPACE/sa/NAME"
            );
        }
        let ports: Vec<&Value> = rule["to"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["operation"]["ports"].as_array().unwrap())
            .collect();
        assert_eq!(ports, [&json!(grpc.to_string())], "the gRPC port only");
    }
}
