//! OpenAPI in both directions: `import` turns a document's operations and security
//! requirements into AuthPolicy rules; `export` writes a policy's OAuth2 security scheme and
//! per-operation security, on its own or merged into the app's document.
//!
//! Documents are edited as JSON values, never through a typed model, so that 3.0, 3.1 and
//! 3.2 documents and every extension survive.

pub mod export;
pub mod import;

use serde_json::Value;

use crate::Global;

/// `openapi import|export`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Write an AuthPolicy whose rules come from an OpenAPI document.
    Import(import::Args),
    /// Write a policy's OAuth2 security scheme and per-operation security as OpenAPI.
    Export(export::Args),
}

/// Runs `openapi`.
pub async fn run(global: &Global, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Import(args) => import::run(global, args).await,
        Command::Export(args) => export::run(global, args).await,
    }
}

/// The HTTP methods an OpenAPI Path Item holds operations for (3.2 adds `query`).
pub const METHODS: [&str; 9] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace", "query",
];

/// Reads a JSON or YAML OpenAPI document.
pub fn parse_document(bytes: &[u8], origin: &str) -> anyhow::Result<Value> {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        return Ok(value);
    }
    let value: Value = serde_yaml_ng::from_slice(bytes)
        .map_err(|err| anyhow::anyhow!("{origin}: neither JSON nor YAML: {err}"))?;
    Ok(value)
}

/// The `openapi` version of a document (`3.0.x`, `3.1.x`, `3.2.x`), or an error for Swagger 2.0
/// and anything else.
pub fn version(doc: &Value) -> anyhow::Result<&str> {
    match doc.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") || v.starts_with("3.1.") || v.starts_with("3.2.") => Ok(v),
        Some(v) => anyhow::bail!("OpenAPI {v} is not supported (3.0, 3.1 and 3.2 are)"),
        None if doc.get("swagger").is_some() => {
            anyhow::bail!("Swagger 2.0 documents are not supported: convert to OpenAPI 3 first")
        }
        None => anyhow::bail!("not an OpenAPI document (no `openapi` field)"),
    }
}

/// `/items/{item_id}/files/{name}.json` → the sidecar's pattern `/items/*/files/*`: a
/// template segment (whole or partial) matches any one segment. `None` when the path holds
/// characters a pattern cannot (then the operation is reported, not guessed).
pub fn template_to_pattern(path: &str) -> Option<(String, bool)> {
    if !path.starts_with('/') {
        return None;
    }
    let mut partial = false;
    let mut out = String::new();
    for segment in path.split('/').skip(1) {
        out.push('/');
        if segment.contains('{') {
            if !(segment.starts_with('{')
                && segment.ends_with('}')
                && segment.matches('{').count() == 1)
            {
                partial = true;
            }
            out.push('*');
        } else {
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    scopegate_core::path::Pattern::parse(&out).ok()?;
    Some((out, partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_patterns() {
        assert_eq!(
            template_to_pattern("/items/{item_id}"),
            Some(("/items/*".into(), false))
        );
        assert_eq!(template_to_pattern("/"), Some(("/".into(), false)));
        assert_eq!(
            template_to_pattern("/files/{name}.json"),
            Some(("/files/*".into(), true))
        );
        assert_eq!(
            template_to_pattern("/a/{x}/b/"),
            Some(("/a/*/b/".into(), false))
        );
        assert_eq!(template_to_pattern("/a b"), None);
        assert_eq!(template_to_pattern("/a/../b"), None);
        assert_eq!(template_to_pattern("items"), None);
    }
}
