//! `explain`: the sidecar's decision on one request, retold step by step. Every step is a
//! call into `scopegate_core`, the code the sidecar runs: path normalisation, rule choice,
//! credential extraction, token validation and revocation, the scope check, and the
//! status and `WWW-Authenticate` answer.
//!
//! - [`decide`]: the steps, each a call into `scopegate_core`;
//! - [`report`]: what they found, as `-o json|yaml` prints it;
//! - [`table`]: the same for people;
//! - [`words`]: rules, requirements and tokens in words (shared with `lint` and `openapi`).

mod decide;
mod report;
mod table;
mod words;

use anyhow::{Context as _, bail};
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};

pub use decide::explain;
pub use words::{action_text, rule_label};

use crate::Global;
use crate::output;
use crate::source::{self, PolicyFlags, TrustedKeys};

/// `explain [POLICY] METHOD TARGET`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// POLICY METHOD TARGET, or METHOD TARGET with -f or --config. TARGET is the request
    /// path with its query, as sent (`/items/%2e%2e/admin?x=1`).
    #[arg(num_args = 2..=3, required = true, value_names = ["POLICY", "METHOD", "TARGET"])]
    words: Vec<String>,
    #[command(flatten)]
    policy: PolicyFlags,
    /// A bearer token, verified as the sidecar verifies it (`-` reads it from stdin).
    #[arg(long, conflicts_with_all = ["scopes", "header"])]
    token: Option<String>,
    /// Skip token verification: a valid token carrying these scopes (comma-separated).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    scopes: Option<Vec<String>>,
    /// A request header, `Name: value` (repeatable), e.g. a raw Authorization header.
    #[arg(short = 'H', long = "header")]
    header: Vec<String>,
    /// Evaluate at this Unix time instead of now.
    #[arg(long)]
    at: Option<i64>,
}

/// The request an explanation is about.
pub struct Request {
    /// Upper-case method.
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Scopes of a token taken as valid without verification.
    pub scopes: Option<Vec<String>>,
}

/// Runs `explain`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let (name, method, target) = positional(&args.words, args.policy.offline())?;
    let loaded = args.policy.load(global, name).await?;
    let mut headers = parse_headers(&args.header)?;
    if let Some(token) = &args.token {
        let token = if token == "-" {
            read_stdin_token()?
        } else {
            token.clone()
        };
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).context("token")?,
        );
    }
    let keys = if args.token.is_some() || headers.contains_key(AUTHORIZATION) {
        let ca = args.policy.ca_pem()?;
        source::trusted_keys(&loaded.config, args.policy.jwks.as_deref(), ca.as_deref()).await
    } else {
        TrustedKeys {
            issuers: Default::default(),
            notes: Vec::new(),
        }
    };
    let request = Request {
        method: method.to_ascii_uppercase(),
        target: target.to_owned(),
        headers,
        scopes: args.scopes,
    };
    let now = args.at.unwrap_or_else(output::unix_now);
    let explanation = explain(&loaded.config, &loaded.origin, &request, &keys, now)?;
    output::print(global.output, "Explanation", &explanation, || {
        table::table(&explanation)
    })?;
    Ok(())
}

/// The words as (POLICY, METHOD, TARGET): POLICY is named unless the policy comes from a
/// file (`offline`).
fn positional(words: &[String], offline: bool) -> anyhow::Result<(Option<&str>, &str, &str)> {
    match (words, offline) {
        ([method, target], true) => Ok((None, method, target)),
        ([name, method, target], false) => Ok((Some(name), method, target)),
        ([_, _], false) => bail!("name the policy: explain POLICY METHOD TARGET (or give -f FILE)"),
        _ => bail!("with -f or --config: explain METHOD TARGET"),
    }
}

/// `-H 'Name: value'` flags as request headers.
fn parse_headers(lines: &[String]) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .with_context(|| format!("header {line:?}: expected 'Name: value'"))?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).context("header name")?,
            HeaderValue::from_str(v.trim_start()).context("header value")?,
        );
    }
    Ok(headers)
}

/// `--token -`: the token from stdin, without surrounding whitespace.
fn read_stdin_token() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
    Ok(text.trim().to_owned())
}
