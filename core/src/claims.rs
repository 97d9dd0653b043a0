//! A verified token's claims set as JSON, and how a claim is named by a dotted path: what
//! conditions, claim headers and scope claims read.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::common::value::Val;

/// A token's claims set as JSON.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// A valid token's claims, kept for `when` conditions and claim headers: the JSON, and its
/// CEL form, converted once on first use (a cached token is judged by many requests, and a
/// condition borrows this form rather than converting the claims again).
pub struct KeptClaims {
    json: Claims,
    cel: OnceLock<Option<Box<dyn Val>>>,
}

impl KeptClaims {
    /// Keeps `json`.
    pub fn new(json: Claims) -> Self {
        Self {
            json,
            cel: OnceLock::new(),
        }
    }

    /// The claims as a CEL map (every claim; integers stay integers, other numbers are
    /// doubles); `None` if they do not convert (a condition then refuses).
    pub fn cel(&self) -> Option<&dyn Val> {
        self.cel
            .get_or_init(|| to_cel_map(&self.json).try_into().ok())
            .as_deref()
    }
}

impl std::ops::Deref for KeptClaims {
    type Target = Claims;

    fn deref(&self) -> &Claims {
        &self.json
    }
}

impl PartialEq for KeptClaims {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for KeptClaims {}

impl std::fmt::Debug for KeptClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.json.fmt(f)
    }
}

/// A JSON object as a CEL map.
fn to_cel_map(map: &Claims) -> cel::Value {
    cel::Value::from(
        map.iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<HashMap<String, cel::Value>>(),
    )
}

/// A JSON value as CEL sees it: integers stay integers, other numbers are doubles.
fn to_cel(value: &serde_json::Value) -> cel::Value {
    use cel::Value;
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(text) => Value::String(Arc::new(text.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(to_cel).collect()))
        }
        serde_json::Value::Object(map) => to_cel_map(map),
    }
}

/// The claim at a dotted `path` (`org.id`), if present. A name selects a member of an
/// object only: lists are not indexed.
pub fn claim_at<'a>(claims: &'a Claims, path: &str) -> Option<&'a serde_json::Value> {
    let mut names = path.split('.');
    let mut value = claims.get(names.next()?);
    for name in names {
        value = value?.get(name);
    }
    value
}
