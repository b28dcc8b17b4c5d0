//! The evaluator's value model.
//!
//! A [`Value`] borrows from the request wherever it can (`'r`): a header, the
//! path, the body are read in place as [`Str::Borrowed`]; a message of the
//! request is a [`Value::Node`], resolved field by field on demand. Values
//! built during an evaluation are reference-counted, so copying one (into a
//! variable's slot, a list, a comprehension's accumulator) is a counter
//! increment, never a deep copy.
//!
//! Equality and ordering follow cel-go: numbers compare across `int`, `uint`
//! and `double` by value, lists and maps element by element, and values of
//! different kinds are unequal (never an error).

use super::request::Node;
use chrono::{DateTime, TimeDelta, Utc};
use indexmap::IndexMap;
use std::any::Any;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A string: borrowed from the request or the policy, or built.
#[derive(Clone)]
pub enum Str<'r> {
    Borrowed(&'r str),
    Owned(Arc<str>),
}

impl<'r> Str<'r> {
    pub fn as_str(&self) -> &str {
        match self {
            Str::Borrowed(s) => s,
            Str::Owned(s) => s,
        }
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Str<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Str<'_> {}
impl Hash for Str<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl From<String> for Str<'_> {
    fn from(s: String) -> Self {
        Str::Owned(Arc::from(s))
    }
}
impl<'r> From<&'r str> for Str<'r> {
    fn from(s: &'r str) -> Self {
        Str::Borrowed(s)
    }
}

/// A byte string: borrowed or built.
#[derive(Clone)]
pub enum Bin<'r> {
    Borrowed(&'r [u8]),
    Owned(Arc<[u8]>),
}

impl Bin<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Bin::Borrowed(b) => b,
            Bin::Owned(b) => b,
        }
    }
}

impl std::ops::Deref for Bin<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}
impl fmt::Debug for Bin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}
impl From<Vec<u8>> for Bin<'_> {
    fn from(b: Vec<u8>) -> Self {
        Bin::Owned(Arc::from(b))
    }
}

/// A map key: CEL maps are keyed by `bool`, `int`, `uint` or `string`.
/// An `int` and a `uint` of the same value are the same key (as in cel-go's
/// heterogeneous lookups): a `uint` that fits an `i64` is kept as an `int`.
#[derive(Clone, Debug)]
pub enum Key<'r> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    String(Str<'r>),
}

impl Key<'_> {
    /// The key of `v`, or `None` for a value that cannot be a key. An
    /// integral `double` finds the integer key of the same value.
    pub fn of<'r>(v: &Value<'r>) -> Option<Key<'r>> {
        Some(match v {
            Value::Bool(b) => Key::Bool(*b),
            Value::Int(i) => Key::Int(*i),
            Value::Uint(u) => match i64::try_from(*u) {
                Ok(i) => Key::Int(i),
                Err(_) => Key::Uint(*u),
            },
            Value::String(s) => Key::String(s.clone()),
            _ => return None,
        })
    }

    /// The key a lookup with `v` finds: as [`Key::of`], and a `double` with
    /// an integral value finds the integer of that value.
    pub fn lookup<'r>(v: &Value<'r>) -> Option<Key<'r>> {
        match v {
            Value::Double(d) if d.fract() == 0.0 && d.is_finite() => {
                if *d >= -9.223_372_036_854_776e18 && *d < 9.223_372_036_854_776e18 {
                    Some(Key::Int(*d as i64))
                } else if *d >= 0.0 && *d < 1.844_674_407_370_955_2e19 {
                    Some(Key::Uint(*d as u64))
                } else {
                    None
                }
            }
            other => Key::of(other),
        }
    }

    pub fn to_value(&self) -> Value<'_> {
        match self {
            Key::Bool(b) => Value::Bool(*b),
            Key::Int(i) => Value::Int(*i),
            Key::Uint(u) => Value::Uint(*u),
            Key::String(s) => Value::String(s.clone()),
        }
    }
}

impl<'r> Key<'r> {
    pub fn into_value(self) -> Value<'r> {
        match self {
            Key::Bool(b) => Value::Bool(b),
            Key::Int(i) => Value::Int(i),
            Key::Uint(u) => Value::Uint(u),
            Key::String(s) => Value::String(s),
        }
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Key::Bool(a), Key::Bool(b)) => a == b,
            (Key::Int(a), Key::Int(b)) => a == b,
            (Key::Uint(a), Key::Uint(b)) => a == b,
            (Key::String(a), Key::String(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Key<'_> {}
impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Key::Bool(b) => b.hash(state),
            Key::Int(i) => i.hash(state),
            Key::Uint(u) => u.hash(state),
            Key::String(s) => s.hash(state),
        }
    }
}

/// A map built during evaluation (a literal, JSON, a library's result), in
/// insertion order. Hashed with aHash, randomly keyed per process (keys may
/// come from requests), at a fraction of SipHash's cost for short keys.
pub type OwnedMap<'r> = IndexMap<Key<'r>, Value<'r>, ahash::RandomState>;

/// A CEL map.
#[derive(Clone)]
pub enum Map<'r> {
    Owned(Arc<OwnedMap<'r>>),
    /// A `map<string, string>` of the request (headers, labels, context
    /// extensions), read in place.
    Strings(&'r HashMap<String, String>),
    /// The request's headers as Envoy sends them in `header_map` (values
    /// may be raw bytes, a name may repeat): a name reads its values joined
    /// with `,`, a `string` when they are UTF-8 and `bytes` otherwise.
    HeaderMap(&'r envoy_types::pb::envoy::config::core::v3::HeaderMap),
}

/// The value of `key` in a request's string map (headers, context
/// extensions): a small map is searched by comparing keys, cheaper than
/// hashing the key with the map's SipHash.
fn strings_get<'m>(m: &'m HashMap<String, String>, key: &str) -> Option<&'m String> {
    if m.len() <= 16 {
        m.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        m.get(key)
    }
}

impl<'r> Map<'r> {
    pub fn new(m: OwnedMap<'r>) -> Self {
        Map::Owned(Arc::new(m))
    }

    pub fn len(&self) -> usize {
        match self {
            Map::Owned(m) => m.len(),
            Map::Strings(m) => m.len(),
            Map::HeaderMap(m) => super::request::header_map_names(m).len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `key`; `None` when absent (or when `key` cannot be a
    /// key of this map's kind).
    pub fn get(&self, key: &Value<'_>) -> Option<Value<'r>> {
        match self {
            Map::Owned(m) => {
                let k = Key::lookup(key)?;
                // `Key` borrows nothing the map needs past the lookup.
                m.get(&k).cloned()
            }
            Map::Strings(m) => match key {
                Value::String(s) => {
                    strings_get(m, s.as_str()).map(|v| Value::String(Str::Borrowed(v)))
                }
                _ => None,
            },
            Map::HeaderMap(m) => match key {
                Value::String(s) => super::request::header_map_get(m, s.as_str()),
                _ => None,
            },
        }
    }

    /// Whether `key` is a key of this map.
    pub fn contains_key(&self, key: &Value<'_>) -> bool {
        match self {
            Map::Owned(m) => Key::lookup(key).is_some_and(|k| m.contains_key(&k)),
            Map::Strings(m) => {
                matches!(key, Value::String(s) if strings_get(m, s.as_str()).is_some())
            }
            Map::HeaderMap(_) => self.get(key).is_some(),
        }
    }

    /// The keys, in the map's order (a request map: sorted, so that
    /// iteration is deterministic).
    pub fn keys(&self) -> Vec<Value<'r>> {
        match self {
            Map::Owned(m) => m.keys().map(|k| k.clone().into_value()).collect(),
            Map::Strings(m) => {
                let mut keys: Vec<&'r str> = m.keys().map(String::as_str).collect();
                keys.sort_unstable();
                keys.into_iter()
                    .map(|k| Value::String(Str::Borrowed(k)))
                    .collect()
            }
            Map::HeaderMap(m) => super::request::header_map_names(m)
                .into_iter()
                .map(|k| Value::String(Str::Owned(Arc::from(k))))
                .collect(),
        }
    }

    /// Key and value pairs, in the order of [`Map::keys`].
    pub fn entries(&self) -> Vec<(Value<'r>, Value<'r>)> {
        match self {
            Map::Owned(m) => m
                .iter()
                .map(|(k, v)| (k.clone().into_value(), v.clone()))
                .collect(),
            _ => self
                .keys()
                .into_iter()
                .map(|k| {
                    let v = self.get(&k).unwrap_or(Value::Null);
                    (k, v)
                })
                .collect(),
        }
    }
}

/// A CEL list.
pub type List<'r> = Arc<Vec<Value<'r>>>;

/// A value a library defines: a decoded token, a parsed MCP request, a
/// response under construction. Libraries downcast it with
/// [`Object::as_any`].
pub trait Object: fmt::Debug + Send + Sync + Any {
    /// The CEL type name, e.g. `jwt.Token`.
    fn type_name(&self) -> &str;
    /// The value of a field an expression reads (`token.Claims`); `None`
    /// when the object has no such field.
    fn field(&self, _name: &str) -> Option<Value<'static>> {
        None
    }
    /// Whether the field is set, for `has()` and `.?`; `None` when the
    /// object has no such field.
    fn has(&self, name: &str) -> Option<bool> {
        self.field(name).map(|_| true)
    }
    /// Equality with another object of the same type name.
    fn equals(&self, _other: &dyn Object) -> bool {
        false
    }
    /// The object as JSON, for traces (`check --explain`); `None` for one
    /// that has no JSON form (a response builder, a key set).
    fn to_json(&self) -> Option<serde_json::Value> {
        None
    }
    fn as_any(&self) -> &dyn Any;
}

/// A type as a value (`type(x)`, `int`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Type {
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    List,
    Map,
    Timestamp,
    Duration,
    Type,
    Optional,
    /// A message of the request, or a library's object, by full name.
    Named(Arc<str>),
}

impl Type {
    pub fn name(&self) -> &str {
        match self {
            Type::Null => "null_type",
            Type::Bool => "bool",
            Type::Int => "int",
            Type::Uint => "uint",
            Type::Double => "double",
            Type::String => "string",
            Type::Bytes => "bytes",
            Type::List => "list",
            Type::Map => "map",
            Type::Timestamp => "google.protobuf.Timestamp",
            Type::Duration => "google.protobuf.Duration",
            Type::Type => "type",
            Type::Optional => "optional_type",
            Type::Named(n) => n,
        }
    }
}

/// A CEL value.
#[derive(Clone)]
#[repr(u64)]
pub enum Value<'r> {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(Str<'r>),
    Bytes(Bin<'r>),
    List(List<'r>),
    Map(Map<'r>),
    Timestamp(DateTime<Utc>),
    Duration(TimeDelta),
    Type(Type),
    /// `optional.of(v)` or `optional.none()`.
    Optional(Option<Arc<Value<'r>>>),
    /// A message of the request, read in place.
    Node(Node<'r>),
    /// A library's value.
    Object(Arc<dyn Object>),
}

impl<'r> Value<'r> {
    pub fn str(s: &'r str) -> Self {
        Value::String(Str::Borrowed(s))
    }

    /// A built string: one allocation, the text copied into it (a
    /// `String` given is dropped, never converted in place).
    pub fn string(s: impl AsRef<str>) -> Self {
        Value::String(Str::Owned(Arc::from(s.as_ref())))
    }

    pub fn bytes(b: impl Into<Vec<u8>>) -> Self {
        Value::Bytes(Bin::Owned(Arc::from(b.into())))
    }

    pub fn list(items: Vec<Value<'r>>) -> Self {
        Value::List(Arc::new(items))
    }

    pub fn map(m: OwnedMap<'r>) -> Self {
        Value::Map(Map::new(m))
    }

    pub fn some(v: Value<'r>) -> Self {
        Value::Optional(Some(Arc::new(v)))
    }

    pub const NONE: Value<'static> = Value::Optional(None);

    pub fn object(o: impl Object) -> Self {
        Value::Object(Arc::new(o))
    }

    /// The value's type.
    pub fn type_of(&self) -> Type {
        match self {
            Value::Null => Type::Null,
            Value::Bool(_) => Type::Bool,
            Value::Int(_) => Type::Int,
            Value::Uint(_) => Type::Uint,
            Value::Double(_) => Type::Double,
            Value::String(_) => Type::String,
            Value::Bytes(_) => Type::Bytes,
            Value::List(_) => Type::List,
            Value::Map(_) => Type::Map,
            Value::Timestamp(_) => Type::Timestamp,
            Value::Duration(_) => Type::Duration,
            Value::Type(_) => Type::Type,
            Value::Optional(_) => Type::Optional,
            Value::Node(n) => Type::Named(Arc::from(n.type_name())),
            Value::Object(o) if o.type_name() == "null_type" => Type::Null,
            Value::Object(o) => Type::Named(Arc::from(o.type_name())),
        }
    }

    /// The type's name, for error messages (never the value).
    pub fn type_name(&self) -> &str {
        match self {
            Value::Node(n) => n.type_name(),
            Value::Object(o) => o.type_name(),
            Value::Null => "null_type",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Uint(_) => "uint",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Timestamp(_) => "google.protobuf.Timestamp",
            Value::Duration(_) => "google.protobuf.Duration",
            Value::Type(_) => "type",
            Value::Optional(_) => "optional_type",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The library object of type `T` behind this value.
    pub fn downcast<T: Object>(&self) -> Option<&T> {
        match self {
            Value::Object(o) => o.as_any().downcast_ref::<T>(),
            _ => None,
        }
    }

    /// A copy of this value that borrows its text from it: a string or
    /// byte string of the plan (a literal, a folded constant) is read in
    /// place for as long as the plan is borrowed, with no reference count
    /// touched. Other values are cloned.
    #[inline]
    pub fn reborrow<'a>(&'a self) -> Value<'a>
    where
        'r: 'a,
    {
        match self {
            Value::String(s) => Value::String(Str::Borrowed(s.as_str())),
            Value::Bytes(b) => Value::Bytes(Bin::Borrowed(b.as_bytes())),
            other => other.clone(),
        }
    }

    /// The library object of type `T` this value holds, to change: in
    /// place when this value is its only holder (the result of the previous
    /// step of a builder chain), else on a copy that this value then holds.
    /// `None` when the value holds no `T`.
    pub fn object_mut<T: Object + Clone>(&mut self) -> Option<&mut T> {
        let Value::Object(o) = self else {
            return None;
        };
        o.as_any().downcast_ref::<T>()?;
        if Arc::get_mut(o).is_none() {
            let copy = o.as_any().downcast_ref::<T>()?.clone();
            *o = Arc::new(copy);
        }
        let o: &mut dyn Any = Arc::get_mut(o)?;
        o.downcast_mut::<T>()
    }

    /// Whether the value is its type's zero value (`optional.ofNonZeroValue`).
    pub fn is_zero(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Int(i) => *i == 0,
            Value::Uint(u) => *u == 0,
            Value::Double(d) => *d == 0.0,
            Value::String(s) => s.is_empty(),
            Value::Bytes(b) => b.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Map(m) => m.is_empty(),
            Value::Timestamp(t) => t.timestamp() == 0 && t.timestamp_subsec_nanos() == 0,
            Value::Duration(d) => d.is_zero(),
            Value::Optional(o) => o.is_none(),
            Value::Type(_) | Value::Node(_) | Value::Object(_) => false,
        }
    }

    /// A copy that borrows nothing: what a cache that outlives the request
    /// may keep.
    pub fn into_static(self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Uint(u) => Value::Uint(u),
            Value::Double(d) => Value::Double(d),
            Value::String(s) => Value::String(match s {
                Str::Owned(s) => Str::Owned(s),
                Str::Borrowed(s) => Str::Owned(Arc::from(s)),
            }),
            Value::Bytes(b) => Value::Bytes(match b {
                Bin::Owned(b) => Bin::Owned(b),
                Bin::Borrowed(b) => Bin::Owned(Arc::from(b)),
            }),
            Value::List(l) => Value::list(l.iter().map(|v| v.clone().into_static()).collect()),
            Value::Map(m) => Value::map(
                m.entries()
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let k = Key::of(&k.into_static())?;
                        Some((k, v.into_static()))
                    })
                    .collect(),
            ),
            Value::Timestamp(t) => Value::Timestamp(t),
            Value::Duration(d) => Value::Duration(d),
            Value::Type(t) => Value::Type(t),
            Value::Optional(o) => {
                Value::Optional(o.map(|v| Arc::new(Value::clone(&v).into_static())))
            }
            // A request message cannot outlive the request: a cache keeps
            // what was read from it, never the message itself.
            Value::Node(_) => Value::Null,
            Value::Object(o) => Value::Object(o),
        }
    }
}

impl fmt::Debug for Value<'_> {
    /// Shows the value: for tests and the user's own tools only, never
    /// for logs (values hold request data).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Uint(u) => write!(f, "{u}u"),
            Value::Double(d) => write!(f, "{d:?}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "{b:?}"),
            Value::List(l) => f.debug_list().entries(l.iter()).finish(),
            Value::Map(m) => f.debug_map().entries(m.entries()).finish(),
            Value::Timestamp(t) => write!(f, "timestamp({t:?})"),
            Value::Duration(d) => write!(f, "duration({d:?})"),
            Value::Type(t) => f.write_str(t.name()),
            Value::Optional(Some(v)) => write!(f, "optional.of({v:?})"),
            Value::Optional(None) => f.write_str("optional.none()"),
            Value::Node(n) => write!(f, "<{}>", n.type_name()),
            Value::Object(o) => write!(f, "{o:?}"),
        }
    }
}

/// CEL equality (`==`): numbers across types by value (NaN equals
/// nothing), lists and maps element-wise, different kinds unequal.
pub fn equals(a: &Value<'_>, b: &Value<'_>) -> bool {
    use Value as V;
    match (a, b) {
        (V::Null, V::Null) => true,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::String(x), V::String(y)) => x.as_str() == y.as_str(),
        (V::Bytes(x), V::Bytes(y)) => x.as_bytes() == y.as_bytes(),
        (V::Int(_) | V::Uint(_) | V::Double(_), V::Int(_) | V::Uint(_) | V::Double(_)) => {
            compare_numbers(a, b) == Some(Ordering::Equal)
        }
        (V::List(x), V::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| equals(p, q))
        }
        (V::Map(x), V::Map(y)) => {
            x.len() == y.len()
                && x.entries()
                    .iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| equals(v, &w)))
        }
        (V::Timestamp(x), V::Timestamp(y)) => x == y,
        (V::Duration(x), V::Duration(y)) => x == y,
        (V::Type(x), V::Type(y)) => x == y,
        (V::Optional(x), V::Optional(y)) => match (x, y) {
            (None, None) => true,
            (Some(p), Some(q)) => equals(p, q),
            _ => false,
        },
        (V::Node(x), V::Node(y)) => x.same(y),
        (V::Object(x), V::Object(y)) => x.type_name() == y.type_name() && x.equals(y.as_ref()),
        // A library's stand-in for null (an absent MCP section) is null.
        (V::Object(o), V::Null) | (V::Null, V::Object(o)) => o.type_name() == "null_type",
        _ => false,
    }
}

/// The order of two numbers of any numeric types: integers exactly, an
/// integer and a double as cel-go orders them (the integer as a double);
/// `None` when either is NaN or either is not a number.
pub fn compare_numbers(a: &Value<'_>, b: &Value<'_>) -> Option<Ordering> {
    use Value as V;
    match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Uint(x), V::Uint(y)) => Some(x.cmp(y)),
        (V::Double(x), V::Double(y)) => x.partial_cmp(y),
        (V::Int(x), V::Uint(y)) => Some(if *x < 0 {
            Ordering::Less
        } else {
            (*x as u64).cmp(y)
        }),
        (V::Uint(_), V::Int(_)) => compare_numbers(b, a).map(Ordering::reverse),
        (V::Int(x), V::Double(y)) => int_double(*x, *y),
        (V::Double(_), V::Int(_)) => compare_numbers(b, a).map(Ordering::reverse),
        (V::Uint(x), V::Double(y)) => uint_double(*x, *y),
        (V::Double(_), V::Uint(_)) => compare_numbers(b, a).map(Ordering::reverse),
        _ => None,
    }
}

fn int_double(i: i64, d: f64) -> Option<Ordering> {
    // As cel-go: out of the int range the double decides; within it the int
    // is compared as a double (so 2^63 - 1 equals 2^63 as doubles do).
    if d.is_nan() {
        return None;
    }
    if d < -9.223_372_036_854_776e18 {
        return Some(Ordering::Greater);
    }
    if d > 9.223_372_036_854_776e18 {
        return Some(Ordering::Less);
    }
    (i as f64).partial_cmp(&d)
}

fn uint_double(u: u64, d: f64) -> Option<Ordering> {
    if d.is_nan() {
        return None;
    }
    if d < 0.0 {
        return Some(Ordering::Greater);
    }
    if d > 1.844_674_407_370_955_2e19 {
        return Some(Ordering::Less);
    }
    (u as f64).partial_cmp(&d)
}

/// The order of two values for `<`, `<=`, `>`, `>=`: numbers (across
/// types), strings, bytes, bools, timestamps, durations. `None`: not
/// comparable (a NaN, or kinds with no order between them), which the
/// operators report as an error, except for NaN (always false).
pub fn compare(a: &Value<'_>, b: &Value<'_>) -> Option<Ordering> {
    use Value as V;
    match (a, b) {
        (V::String(x), V::String(y)) => Some(x.as_str().cmp(y.as_str())),
        (V::Bytes(x), V::Bytes(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::Timestamp(x), V::Timestamp(y)) => Some(x.cmp(y)),
        (V::Duration(x), V::Duration(y)) => Some(x.cmp(y)),
        _ => compare_numbers(a, b),
    }
}

/// Whether `a` and `b` can be ordered at all (both numbers, or of the same
/// ordered kind), whatever their values.
pub fn orderable(a: &Value<'_>, b: &Value<'_>) -> bool {
    use Value as V;
    matches!(
        (a, b),
        (
            V::Int(_) | V::Uint(_) | V::Double(_),
            V::Int(_) | V::Uint(_) | V::Double(_)
        ) | (V::String(_), V::String(_))
            | (V::Bytes(_), V::Bytes(_))
            | (V::Bool(_), V::Bool(_))
            | (V::Timestamp(_), V::Timestamp(_))
            | (V::Duration(_), V::Duration(_))
    )
}

/// A value as JSON, for traces and the decision log of `--explain`: bytes
/// as base64, timestamps as RFC 3339, durations as `"1.5s"`. `None` for a
/// value with no JSON form (a type, an object without one).
pub fn to_json(v: &Value<'_>) -> Option<serde_json::Value> {
    use base64::Engine as _;
    use serde_json::Value as J;
    Some(match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Uint(u) => J::from(*u),
        Value::Double(d) => serde_json::Number::from_f64(*d)
            .map(J::Number)
            .unwrap_or_else(|| J::String(d.to_string())),
        Value::String(s) => J::String(s.to_string()),
        Value::Bytes(b) => {
            J::String(base64::engine::general_purpose::STANDARD.encode(b.as_bytes()))
        }
        Value::List(l) => J::Array(l.iter().map(to_json).collect::<Option<_>>()?),
        Value::Map(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m.entries() {
                let k = match k {
                    Value::String(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    Value::Uint(u) => u.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                out.insert(k, to_json(&v)?);
            }
            J::Object(out)
        }
        Value::Timestamp(t) => J::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        Value::Duration(d) => J::String(format_duration(*d)),
        Value::Optional(Some(v)) => to_json(v)?,
        Value::Optional(None) => J::Null,
        Value::Type(t) => J::String(t.name().to_owned()),
        Value::Object(o) => return o.to_json(),
        Value::Node(_) => return None,
    })
}

/// A JSON value as a CEL value: numbers are `double` (as cel-go reads
/// `google.protobuf.Value`), except integers, which stay `int` (or `uint`
/// beyond `i64`), as the libraries have always read JSON here.
pub fn from_json(j: &serde_json::Value) -> Value<'static> {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::Uint(u)
            } else {
                Value::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::string(s.as_str()),
        J::Array(a) => Value::list(a.iter().map(from_json).collect()),
        J::Object(o) => Value::map(
            o.iter()
                .map(|(k, v)| (Key::String(Str::Owned(Arc::from(k.as_str()))), from_json(v)))
                .collect(),
        ),
    }
}

/// Appends `.` and the digits of `nanos` nanoseconds a second needs (none
/// when zero): `.5`, `.000000001`.
pub fn push_fraction(out: &mut String, nanos: u32) {
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
}

/// A duration as CEL's `string(duration)` writes it: seconds with the
/// fraction needed, e.g. `1.5s`, `-0.000000001s`, `3600s`.
pub fn format_duration(d: TimeDelta) -> String {
    let negative = d < TimeDelta::zero();
    let d = d.abs();
    let secs = d.num_seconds();
    let nanos = d.subsec_nanos();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&secs.to_string());
    push_fraction(&mut out, nanos.unsigned_abs());
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_string_map_is_searched_alike_small_or_large() {
        for n in [0usize, 1, 5, 16, 17, 40] {
            let m: HashMap<String, String> =
                (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
            let map = Map::Strings(&m);
            for i in 0..n + 2 {
                let key = Value::String(Str::Owned(format!("k{i}").into()));
                let want = m.get(&format!("k{i}")).cloned();
                let got = map.get(&key).map(|v| match v {
                    Value::String(s) => s.as_str().to_owned(),
                    other => panic!("{other:?}"),
                });
                assert_eq!(got, want, "{n} entries, key k{i}");
                assert_eq!(map.contains_key(&key), want.is_some());
            }
            assert!(map.get(&Value::Int(1)).is_none());
        }
    }

    #[test]
    fn numbers_compare_exactly_across_types() {
        // As cel-go: the int is compared as a double.
        let big = Value::Int(i64::MAX);
        assert_eq!(
            compare(&big, &Value::Double(9.223_372_036_854_776e18)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare(&Value::Uint(u64::MAX), &Value::Int(i64::MAX)),
            Some(Ordering::Greater)
        );
        assert!(equals(&Value::Int(1), &Value::Uint(1)));
        assert!(equals(&Value::Int(1), &Value::Double(1.0)));
        assert!(!equals(&Value::Int(-1), &Value::Uint(u64::MAX)));
        assert!(!equals(&Value::Double(f64::NAN), &Value::Double(f64::NAN)));
        assert_eq!(
            compare(&Value::Uint(3), &Value::Double(2.5)),
            Some(Ordering::Greater)
        );
        assert!(!equals(&Value::Int(1), &Value::string("1")));
    }

    #[test]
    fn map_keys_unify_int_and_uint() {
        let mut m = OwnedMap::default();
        m.insert(Key::of(&Value::Int(1)).unwrap(), Value::str("a"));
        let m = Map::new(m);
        assert!(m.get(&Value::Uint(1)).is_some());
        assert!(m.get(&Value::Double(1.0)).is_some());
        assert!(m.get(&Value::Double(1.5)).is_none());
    }

    #[test]
    fn durations_format_as_cel_does() {
        assert_eq!(format_duration(TimeDelta::milliseconds(1500)), "1.5s");
        assert_eq!(format_duration(TimeDelta::seconds(3600)), "3600s");
        assert_eq!(format_duration(TimeDelta::nanoseconds(-1)), "-0.000000001s");
    }
}
