//! A verified token's claims set as JSON, and how a claim is named by a dotted path: what
//! conditions, claim headers and scope claims read.

/// A token's claims set as JSON.
pub type Claims = serde_json::Map<String, serde_json::Value>;

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
