//! `token`: decode a token, verify it against a JWKS, and list the policies of a namespace
//! that would accept it. Verification is `scopegate_core::token::validate` plus the client
//! cut-offs, the sidecar's own code; the decoded header and claims are shown as sent.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use scopegate_core::jose::b64;
use scopegate_core::jose::keys::{Alg, load_jwks};
use scopegate_core::revocation;
use scopegate_core::token::{self, IssuerKeys, TokenError, TokenRules, VerifiedToken};
use serde::Serialize;
use serde_json::Value;

use crate::output;
use crate::source::{self, Loaded, PolicyFlags};
use crate::{Failure, Global, fetch};

/// `token [TOKEN]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The token (`-` or nothing: read it from stdin).
    token: Option<String>,
    /// With --jwks: an audience the token must carry (repeatable).
    #[arg(long)]
    audience: Vec<String>,
    /// With --jwks: algorithms accepted for keys without `alg` (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ES256,ES384,RS256,RS384,RS512,PS256,PS384,PS512,EdDSA"
    )]
    algorithms: Vec<String>,
    /// With --jwks: also accept `typ: JWT` (external issuers that are configured so).
    #[arg(long)]
    allow_jwt_typ: bool,
    /// Do not ask the cluster which policies would accept the token.
    #[arg(long)]
    offline: bool,
    /// `--jwks`: verify against this JWKS (file or https URL); `--issuer`: with --jwks, the
    /// issuer (`iss`) the token must name; `-f`/`--config`: policies from a file instead of
    /// the cluster.
    #[command(flatten)]
    policy: PolicyFlags,
}

/// The report.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Report {
    header: Value,
    claims: Value,
    times: Vec<(String, String)>,
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verification: Option<Verification>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policies: Vec<PolicyVerdict>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Verification {
    jwks: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
    unchecked: Vec<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct PolicyVerdict {
    policy: String,
    accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

/// Runs `token`.
pub async fn run(global: &Global, args: Args) -> anyhow::Result<()> {
    let token = match args.token.as_deref() {
        Some("-") | None => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text.trim().to_owned()
        }
        Some(t) => t.to_owned(),
    };
    let now = output::unix_now();
    let (header, claims) = decode(&token)?;
    let mut report = Report {
        times: times(&claims, now),
        warnings: warnings(&header, &claims),
        header,
        claims,
        verification: None,
        policies: Vec::new(),
        notes: Vec::new(),
    };
    let ca = args.policy.ca_pem()?;
    if let Some(location) = &args.policy.jwks {
        let checked = verify_with_jwks(&args, location, ca.as_deref(), &token, &report.claims, now);
        let (verification, notes) = checked.await?;
        report.notes.extend(notes);
        report.verification = Some(verification);
    }
    let want_policies = args.policy.offline() || !args.offline;
    if want_policies {
        match source::namespace_policies(global, &args.policy).await {
            Ok(loaded) => {
                for item in loaded {
                    let verdict = policy_verdict(&item, &token, ca.as_deref(), now).await;
                    report.policies.push(verdict);
                }
                if report.policies.is_empty() {
                    report.notes.push("no AuthPolicy in the namespace".into());
                }
            }
            Err(err) if !args.policy.offline() => {
                report.notes.push(format!("policies not checked: {err:#}"));
            }
            Err(err) => return Err(err),
        }
    }
    output::print(global.output, "TokenReport", &report, || {
        table(&report, now)
    })?;
    let rejected_by_jwks = report.verification.as_ref().is_some_and(|v| !v.valid);
    let no_policy_accepts =
        !report.policies.is_empty() && report.policies.iter().all(|p| !p.accepted);
    if rejected_by_jwks || (report.verification.is_none() && no_policy_accepts) {
        return Err(Failure::Findings("token not accepted".into()).into());
    }
    Ok(())
}

/// Verifies the token against the JWKS at `location` (issuer and audiences from the flags,
/// else taken from the token and listed as not checked). Also returns a note per key of the
/// set that was left out.
async fn verify_with_jwks(
    args: &Args,
    location: &str,
    ca: Option<&str>,
    token: &str,
    claims: &Value,
    now: i64,
) -> anyhow::Result<(Verification, Vec<String>)> {
    let body = fetch::read(location, ca).await?;
    let allowed = allowed_algorithms(&args.algorithms)?;
    let (keys, skipped) =
        load_jwks(&body, &allowed).with_context(|| format!("{location}: not a JWKS"))?;
    let notes = skipped
        .into_iter()
        .map(|err| format!("{location}: key left out: {err}"))
        .collect();
    let mut unchecked = Vec::new();
    let issuer = match &args.policy.issuer {
        Some(issuer) => issuer.clone(),
        None => {
            unchecked.push("issuer (give --issuer)".to_owned());
            claims
                .get("iss")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        }
    };
    let audiences = if args.audience.is_empty() {
        unchecked.push("audience (give --audience)".to_owned());
        audiences_of(claims)
    } else {
        args.audience.clone()
    };
    let rules = TokenRules {
        audiences,
        leeway_secs: 0,
        max_token_bytes: scopegate_core::config::DEFAULT_MAX_TOKEN_BYTES,
        keep_claims: false,
        kept_claims: None,
    };
    let keys = IssuerKeys {
        keys: Arc::new(keys),
        allow_jwt_typ: args.allow_jwt_typ,
        scopes: None,
        audiences: None,
    };
    let result = token::validate(
        token,
        &rules,
        |iss| (iss == issuer).then(|| keys.clone()),
        now,
    );
    unchecked.push("revocation (only the issuer and its verifiers know)".to_owned());
    let verification = Verification {
        jwks: location.to_owned(),
        valid: result.is_ok(),
        failed: result.err().map(|e| scopegate_core::error_chain(&e)),
        unchecked,
    };
    Ok((verification, notes))
}

/// `--algorithms`, parsed; HS256 is never accepted from a JWKS.
fn allowed_algorithms(names: &[String]) -> anyhow::Result<Vec<Alg>> {
    names
        .iter()
        .map(|a| {
            Alg::from_name(a)
                .filter(|a| *a != Alg::Hs256)
                .with_context(|| format!("algorithm {a:?}"))
        })
        .collect()
}

/// The token's `aud`, a string or an array of strings.
fn audiences_of(claims: &Value) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a policy's sidecars would accept the token: its keys, validation and client
/// cut-offs, as the sidecar checks them.
async fn policy_verdict(item: &Loaded, token: &str, ca: Option<&str>, now: i64) -> PolicyVerdict {
    let keys = source::trusted_keys(&item.config, None, ca).await;
    let rules = TokenRules::from_config(&item.config.verify);
    let result: Result<VerifiedToken, TokenError> =
        token::validate(token, &rules, |iss| keys.issuers.get(iss).cloned(), now).and_then(|v| {
            match revocation::revoked(&v, &item.config.revocation.client_cutoffs, None) {
                Some(reason) => Err(TokenError::Revoked(reason)),
                None => Ok(v),
            }
        });
    PolicyVerdict {
        policy: format!(
            "{}/{}",
            item.config.policy.namespace, item.config.policy.name
        ),
        accepted: result.is_ok(),
        reason: result.err().map(|e| scopegate_core::error_chain(&e)),
        notes: keys.notes,
    }
}

/// The header and claims as JSON, without verifying anything.
fn decode(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a compact JWS (three dot-separated parts)");
    };
    let part = |text: &str, what: &str| -> anyhow::Result<Value> {
        let bytes =
            b64::decode(text.as_bytes()).map_err(|_| anyhow::anyhow!("{what}: not base64url"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what}: not JSON"))
    };
    Ok((part(h, "header")?, part(c, "claims")?))
}

fn times(claims: &Value, now: i64) -> Vec<(String, String)> {
    ["iat", "nbf", "exp"]
        .iter()
        .filter_map(|k| {
            claims
                .get(*k)
                .and_then(Value::as_i64)
                .map(|t| ((*k).to_owned(), output::when(t, now)))
        })
        .collect()
}

fn warnings(header: &Value, claims: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg.eq_ignore_ascii_case("none") || alg.is_empty() {
        out.push(format!(
            "alg {alg:?}: an unsigned token, refused everywhere"
        ));
    }
    let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
    if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
        out.push(format!("typ {typ:?}: not an RFC 9068 access token (at+jwt); only external issuers configured with allowJwtTyp accept it"));
    }
    for key in ["jku", "x5u", "jwk", "x5c"] {
        if header.get(key).is_some() {
            out.push(format!("header {key}: keys are never taken from a token"));
        }
    }
    if let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_i64),
        claims.get("exp").and_then(Value::as_i64),
    ) && exp - iat > 24 * 3600
    {
        out.push(format!(
            "lifetime {}h: long-lived access tokens outlive revocations",
            (exp - iat) / 3600
        ));
    }
    if claims.get("exp").is_none() {
        out.push("no exp: refused by every verifier".into());
    }
    out
}

fn table(r: &Report, _now: i64) -> String {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = format!(
        "HEADER\n{}\nCLAIMS\n{}\n",
        pretty(&r.header),
        pretty(&r.claims)
    );
    for (k, v) in &r.times {
        out.push_str(&format!("  {k:<4} {v}\n"));
    }
    for w in &r.warnings {
        out.push_str(&format!("WARNING   {w}\n"));
    }
    if let Some(v) = &r.verification {
        match &v.failed {
            None => out.push_str(&format!("VERIFIED  with {}\n", v.jwks)),
            Some(why) => out.push_str(&format!("INVALID   with {}: {why}\n", v.jwks)),
        }
        for u in &v.unchecked {
            out.push_str(&format!("  not checked: {u}\n"));
        }
    }
    if !r.policies.is_empty() {
        let mut rows = vec![vec![
            "POLICY".to_owned(),
            "ACCEPTS".to_owned(),
            "WHY NOT".to_owned(),
        ]];
        for p in &r.policies {
            rows.push(vec![
                p.policy.clone(),
                if p.accepted { "yes" } else { "no" }.to_owned(),
                p.reason.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&output::columns(&rows));
        for p in &r.policies {
            for n in &p.notes {
                out.push_str(&format!("NOTE      {}: {n}\n", p.policy));
            }
        }
    }
    for n in &r.notes {
        out.push_str(&format!("NOTE      {n}\n"));
    }
    out
}
