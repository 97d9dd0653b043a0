//! The token-exchange grant (RFC 8693): a confidential client whose registry entry declares
//! `tokenExchange` presents an access token it received (`subject_token`, signed by this
//! issuer, sent to one of its `subjectAudiences`) and gets one for other audiences, on the
//! same subject, with at most the subject token's scopes it may itself have, expiring no
//! later than the subject token, and naming itself in `act` (nested for chains, §4.1).
//!
//! The authenticated client is always the actor: `actor_token` and a subject token carrying
//! `may_act` are refused, and impersonation (a token without `act`) is never issued. The
//! issued token is recorded under the subject token's `jti` before it is signed, so revoking
//! the subject token (by any path: [`ops::revoke_jtis`]) revokes it too.

use std::collections::BTreeMap;

use scopegate_core::clients::{MAX_EXCHANGE_DEPTH, RegisteredClient, TokenExchange};
use scopegate_core::jose::json::Claims;
use serde_json::{Map, Value, json};

use crate::Context;
use crate::access::{self, Actor, Grant};
use crate::error::OAuthError;
use crate::form::Form;
use crate::grant;
use crate::introspect;
use crate::ops;

/// The token type of an access token (RFC 8693 §3): the issued one, and a subject token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The token type of a JWT (RFC 8693 §3), also accepted for a subject token: this issuer's
/// access tokens are JWTs.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

const NOT_OURS: &str = "subject_token is not an access token of this issuer";
const INCOMPLETE: &str = "subject_token lacks sub, exp, iat, jti or client_id";
const EXPIRED: &str = "subject_token has expired";
const NOT_YET: &str = "subject_token is not valid yet";
const REVOKED: &str = "subject_token is revoked";
const SUBJECT_CUT_OFF: &str = "subject_token is older than its subject's cut-off";
const CLIENT_CUT_OFF: &str = "subject_token is older than its client's cut-off";
const NOT_SENT_HERE: &str =
    "subject_token was not sent to this client: none of its audiences is a subjectAudience";
const MAY_ACT: &str = "subject_token carries may_act: no declaration allows it";
const MALFORMED_ACT: &str = "subject_token has a malformed act claim";
const TOO_DEEP: &str = "subject_token's chain of actors is as long as this client may extend";
const TOO_MANY: &str = "subject_token has 128 live exchanged tokens: use those";

/// The exchange declaration of `client`: `unauthorized_client` unless it is confidential and
/// declares `tokenExchange`.
pub fn rules(client: &RegisteredClient) -> Result<&TokenExchange, OAuthError> {
    match &client.token_exchange {
        Some(rules) if !client.public => Ok(rules),
        _ => Err(OAuthError::UnauthorizedClient),
    }
}

/// Answers a token-exchange request of `client` (already authenticated, the grant type among
/// its `grant_types`, its declaration `rules`). Every refusal is about the request's subject
/// token, audiences or scopes.
pub async fn exchange(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    rules: &TokenExchange,
    form: &Form,
    now: i64,
) -> Result<Value, OAuthError> {
    let request = parse_request(form, rules)?;
    let settings = ctx.settings;
    let subject = read_subject(ctx, request.subject_token, rules, now).await?;
    let scope = exchange_scope(
        request.scope.as_deref(),
        &subject.scope,
        &client.scopes,
        &settings.config.scopes,
    )?;
    let act = Actor {
        sub: client.client_id.clone(),
        act: subject.act.clone().map(Box::new),
    };
    let ttl = i64::try_from(settings.config.access_token_ttl_secs).unwrap_or(i64::MAX);
    let mut planned = access::plan(settings, now, ttl)?;
    planned.exp = planned.exp.min(subject.exp);
    let issued = (planned.jti.clone(), planned.exp);
    let keep_until = subject.exp.saturating_add(settings.leeway);
    if !ops::record_exchanged(ctx, &subject.jti, keep_until, issued.clone(), now).await? {
        return Err(OAuthError::InvalidRequest(TOO_MANY));
    }
    // A revocation that read the record before this write missed the new token: it is
    // revoked here instead (a revocation after the write reaches it through the record).
    if let Some(why) = revocation(ctx, &subject).await? {
        ops::revoke_jtis(ctx, vec![issued], now).await?;
        return Err(OAuthError::InvalidRequest(why));
    }
    let token = planned.sign(
        &settings.config.url,
        &Grant {
            sub: &subject.sub,
            client_id: &client.client_id,
            aud: &request.audiences,
            scope: &scope,
            act: Some(&act),
        },
        &ctx.issuer.rng,
    )?;
    tracing::info!(
        target: "scopegate::audit",
        action = "token_exchange",
        client_id = %client.client_id,
        subject_client_id = %subject.client_id,
        subject_jti = %subject.jti,
        jti = %issued.0,
        depth = act.depth(),
        audiences = %request.audiences.join(" "),
        scope = %scope.join(" "),
        "token exchanged"
    );
    Ok(json!({
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": planned.exp - now,
        "scope": scope.join(" "),
    }))
}

/// The parameters of an exchange request, checked against what the client may ask for.
#[derive(Debug, PartialEq, Eq)]
struct ExchangeRequest<'f> {
    subject_token: &'f str,
    /// `audience` and `resource` together, in order, each once.
    audiences: Vec<String>,
    scope: Option<Vec<String>>,
}

fn parse_request<'f>(
    form: &'f Form,
    rules: &TokenExchange,
) -> Result<ExchangeRequest<'f>, OAuthError> {
    if form.get("actor_token").is_some() || form.get("actor_token_type").is_some() {
        return Err(OAuthError::InvalidRequest(
            "the authenticated client is the actor; actor_token is not accepted",
        ));
    }
    let subject_token = form.require("subject_token")?;
    let subject_type = form.require("subject_token_type")?;
    if subject_type != ACCESS_TOKEN_TYPE && subject_type != JWT_TOKEN_TYPE {
        return Err(OAuthError::InvalidRequest(
            "subject_token_type must be urn:ietf:params:oauth:token-type:access_token or urn:ietf:params:oauth:token-type:jwt",
        ));
    }
    if form
        .get("requested_token_type")
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(OAuthError::InvalidRequest(
            "requested_token_type must be urn:ietf:params:oauth:token-type:access_token",
        ));
    }
    let mut requested = form.all("audience");
    requested.extend(form.all("resource"));
    if requested.is_empty() {
        return Err(OAuthError::InvalidRequest(
            "audience or resource is required: the audience of the token to issue",
        ));
    }
    let audiences = grant::audiences(&requested, &rules.audiences, &[])?;
    let scope = grant::parse_scope(form.get("scope"))?;
    Ok(ExchangeRequest {
        subject_token,
        audiences,
        scope,
    })
}

/// A subject token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Subject {
    sub: String,
    client_id: String,
    jti: String,
    iat: i64,
    exp: i64,
    scope: Vec<String>,
    act: Option<Actor>,
}

/// Reads and checks the subject token: ours, live, sent to the client, not revoked (RFC 8693
/// §2.2.2: every refusal is `invalid_request`, naming the rule, never the token).
async fn read_subject(
    ctx: &Context<'_>,
    token: &str,
    rules: &TokenExchange,
    now: i64,
) -> Result<Subject, OAuthError> {
    let settings = ctx.settings;
    let (claims, act) = introspect::read_access_token_and(settings, token, actor_chain)
        .ok_or(OAuthError::InvalidRequest(NOT_OURS))?;
    let subject = check_subject(claims, act, rules, settings.leeway, now)
        .map_err(OAuthError::InvalidRequest)?;
    if settings.client_cut_off(&subject.client_id, subject.iat) {
        return Err(OAuthError::InvalidRequest(CLIENT_CUT_OFF));
    }
    if let Some(why) = revocation(ctx, &subject).await? {
        return Err(OAuthError::InvalidRequest(why));
    }
    Ok(subject)
}

/// Why the store says the subject token is revoked, if it does.
async fn revocation(
    ctx: &Context<'_>,
    subject: &Subject,
) -> Result<Option<&'static str>, OAuthError> {
    let store = ctx.issuer.store.as_ref();
    if store.jti_revoked(&subject.jti).await? {
        return Ok(Some(REVOKED));
    }
    if store
        .subject_cutoff(&subject.sub)
        .await?
        .is_some_and(|before| subject.iat < before)
    {
        return Ok(Some(SUBJECT_CUT_OFF));
    }
    Ok(None)
}

/// The checks of a verified subject token that need no store: its claims, its lifetime (no
/// leeway on `exp`: the issuer's clock set it, and an exchanged token must expire after
/// `now`), its audience, and its chain of actors (`act`, read by [`actor_chain`]).
fn check_subject(
    claims: Claims,
    act: Result<Option<Actor>, &'static str>,
    rules: &TokenExchange,
    leeway: i64,
    now: i64,
) -> Result<Subject, &'static str> {
    let (Some(sub), Some(exp), Some(iat), Some(jti), Some(client_id)) = (
        claims.sub,
        claims.exp,
        claims.iat,
        claims.jti,
        claims.client_id,
    ) else {
        return Err(INCOMPLETE);
    };
    if exp <= now {
        return Err(EXPIRED);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(leeway))
    {
        return Err(NOT_YET);
    }
    if !claims
        .aud
        .is_some_and(|aud| aud.contains_any(&rules.subject_audiences))
    {
        return Err(NOT_SENT_HERE);
    }
    let act = act?;
    let depth = act.as_ref().map_or(0, Actor::depth) + 1;
    if depth > usize::from(rules.max_depth.min(MAX_EXCHANGE_DEPTH)) {
        return Err(TOO_DEEP);
    }
    let scope = grant::parse_scope(claims.scope.as_deref())
        .ok()
        .flatten()
        .unwrap_or_default();
    Ok(Subject {
        sub,
        client_id,
        jti,
        iat,
        exp,
        scope,
        act,
    })
}

/// The subject token's `act` chain from its verified payload: `None` without one; refused
/// when it carries `may_act` or an `act` that is not a chain of objects with a string `sub`
/// and an optional nested `act` (nothing else), at most [`MAX_EXCHANGE_DEPTH`] deep.
fn actor_chain(payload: &[u8]) -> Result<Option<Actor>, &'static str> {
    let claims: Map<String, Value> = serde_json::from_slice(payload).map_err(|_| MALFORMED_ACT)?;
    if claims.contains_key("may_act") {
        return Err(MAY_ACT);
    }
    claims.get("act").map(|act| actor(act, 1)).transpose()
}

fn actor(value: &Value, depth: u8) -> Result<Actor, &'static str> {
    if depth > MAX_EXCHANGE_DEPTH {
        return Err(TOO_DEEP);
    }
    let Value::Object(members) = value else {
        return Err(MALFORMED_ACT);
    };
    if members.keys().any(|k| k != "sub" && k != "act") {
        return Err(MALFORMED_ACT);
    }
    let Some(Value::String(sub)) = members.get("sub") else {
        return Err(MALFORMED_ACT);
    };
    if sub.is_empty() {
        return Err(MALFORMED_ACT);
    }
    let previous = match members.get("act") {
        Some(previous) => Some(Box::new(actor(previous, depth + 1)?)),
        None => None,
    };
    Ok(Actor {
        sub: sub.clone(),
        act: previous,
    })
}

/// The scopes of the exchanged token: those requested, each one the subject token has, the
/// client may have and the issuer knows; without `scope`, all such. None left is
/// `invalid_scope`, as is a requested one outside them (never silently dropped).
fn exchange_scope(
    requested: Option<&[String]>,
    subject: &[String],
    client: &[String],
    vocabulary: &BTreeMap<String, String>,
) -> Result<Vec<String>, OAuthError> {
    let allowed = |s: &String| {
        subject.contains(s)
            && client.contains(s)
            && (vocabulary.is_empty() || vocabulary.contains_key(s))
    };
    let scope: Vec<String> = match requested {
        Some(requested) if requested.iter().all(allowed) => requested.to_vec(),
        Some(_) => return Err(OAuthError::InvalidScope),
        None => subject.iter().filter(|s| allowed(s)).cloned().collect(),
    };
    if scope.is_empty() {
        return Err(OAuthError::InvalidScope);
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scopegate_core::jose::json::Audience;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn rules(max_depth: u8) -> TokenExchange {
        TokenExchange {
            subject_audiences: v(&["https://orders.example"]),
            audiences: v(&["https://payments.example", "https://stock.example"]),
            max_depth,
        }
    }

    const NOW: i64 = 1_000_000;

    fn claims() -> Claims {
        Claims {
            iss: Some("https://auth.example".into()),
            sub: Some("alice".into()),
            aud: Some(Audience::Many(v(&[
                "https://other.example",
                "https://orders.example",
            ]))),
            exp: Some(NOW + 60),
            nbf: Some(NOW - 1),
            iat: Some(NOW - 1),
            jti: Some("j1".into()),
            client_id: Some("shop.web".into()),
            scope: Some("read:items write:items".into()),
        }
    }

    fn chain(subs: &[&str]) -> Option<Actor> {
        subs.iter().rev().fold(None, |act, sub| {
            Some(Actor {
                sub: (*sub).to_owned(),
                act: act.map(Box::new),
            })
        })
    }

    fn form(text: &str) -> Form {
        Form::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_request_names_its_subject_token_types_and_allowed_audiences() {
        let ok = form(
            "subject_token=t&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt\
             &audience=https%3A%2F%2Fstock.example&resource=https%3A%2F%2Fpayments.example\
             &audience=https%3A%2F%2Fpayments.example&scope=read:items",
        );
        assert_eq!(
            parse_request(&ok, &rules(2)),
            Ok(ExchangeRequest {
                subject_token: "t",
                audiences: v(&["https://stock.example", "https://payments.example"]),
                scope: Some(v(&["read:items"])),
            }),
            "audience and resource are one set, repeats allowed"
        );
        let at = "subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";
        let aud = "audience=https%3A%2F%2Fpayments.example";
        let cases = [
            (format!("{at}&{aud}"), "subject_token is missing"),
            (
                format!("subject_token=t&{aud}"),
                "subject_token_type is missing",
            ),
            (
                format!(
                    "subject_token=t&{aud}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"
                ),
                "subject_token_type must be",
            ),
            (
                format!(
                    "subject_token=t&{at}&{aud}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Arefresh_token"
                ),
                "requested_token_type must be",
            ),
            (
                format!("subject_token=t&{at}"),
                "audience or resource is required",
            ),
            (
                format!("subject_token=t&{at}&{aud}&actor_token=x&actor_token_type=y"),
                "the authenticated client is the actor",
            ),
            (
                format!("subject_token=t&{at}&{aud}&actor_token_type=y"),
                "the authenticated client is the actor",
            ),
        ];
        for (text, why) in cases {
            let err = parse_request(&form(&text), &rules(2)).unwrap_err();
            assert_eq!(err.code(), "invalid_request", "{text}");
            assert!(
                err.body()["error_description"]
                    .as_str()
                    .unwrap()
                    .starts_with(why),
                "{text}: {err:?}"
            );
        }
        let explicit = form(&format!(
            "subject_token=t&{at}&{aud}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
        ));
        assert!(parse_request(&explicit, &rules(2)).is_ok());
        for outside in [
            "audience=https%3A%2F%2Fevil.example",
            "resource=https%3A%2F%2Forders.example",
            "audience=https%3A%2F%2Fpayments.example&resource=https%3A%2F%2Fpayments.example%2F",
        ] {
            assert_eq!(
                parse_request(&form(&format!("subject_token=t&{at}&{outside}")), &rules(2)),
                Err(OAuthError::InvalidTarget),
                "{outside}"
            );
        }
    }

    #[test]
    fn a_subject_token_is_live_sent_here_and_short_enough_to_extend() {
        let ok = check_subject(claims(), Ok(None), &rules(1), 30, NOW).unwrap();
        assert_eq!(
            (ok.sub.as_str(), ok.jti.as_str(), ok.exp, &ok.scope),
            ("alice", "j1", NOW + 60, &v(&["read:items", "write:items"]))
        );
        let with = |edit: fn(&mut Claims)| {
            let mut c = claims();
            edit(&mut c);
            check_subject(c, Ok(None), &rules(2), 30, NOW)
        };
        assert_eq!(with(|c| c.exp = Some(NOW)), Err(EXPIRED));
        assert!(with(|c| c.exp = Some(NOW + 1)).is_ok());
        assert_eq!(with(|c| c.nbf = Some(NOW + 31)), Err(NOT_YET));
        assert!(
            with(|c| c.nbf = Some(NOW + 30)).is_ok(),
            "nbf has the leeway"
        );
        assert_eq!(
            with(|c| c.aud = Some(Audience::One("https://payments.example".into()))),
            Err(NOT_SENT_HERE)
        );
        assert_eq!(with(|c| c.aud = None), Err(NOT_SENT_HERE));
        assert_eq!(with(|c| c.jti = None), Err(INCOMPLETE));
        assert_eq!(with(|c| c.client_id = None), Err(INCOMPLETE));
        // Depth: the new token's chain is the subject's plus one.
        let depth =
            |act: &[&str], max| check_subject(claims(), Ok(chain(act)), &rules(max), 30, NOW);
        assert!(depth(&["a"], 2).is_ok());
        assert_eq!(depth(&["a"], 1), Err(TOO_DEEP));
        assert!(depth(&["a", "b", "c"], 4).is_ok());
        assert_eq!(depth(&["a", "b", "c", "d"], 4), Err(TOO_DEEP));
        assert_eq!(
            depth(&["a", "b", "c", "d"], 200),
            Err(TOO_DEEP),
            "never beyond MAX_EXCHANGE_DEPTH"
        );
        assert_eq!(
            check_subject(claims(), Err(MAY_ACT), &rules(4), 30, NOW),
            Err(MAY_ACT)
        );
    }

    #[test]
    fn act_chains_are_read_strictly() {
        let read = |claims: Value| actor_chain(claims.to_string().as_bytes());
        assert_eq!(read(json!({"sub": "alice"})), Ok(None));
        assert_eq!(
            read(json!({"act": {"sub": "b", "act": {"sub": "a"}}})),
            Ok(chain(&["b", "a"]))
        );
        assert_eq!(chain(&["b", "a"]).unwrap().depth(), 2);
        assert_eq!(read(json!({"may_act": {"sub": "x"}})), Err(MAY_ACT));
        for bad in [
            json!({"act": "b"}),
            json!({"act": null}),
            json!({"act": {}}),
            json!({"act": {"sub": 1}}),
            json!({"act": {"sub": ""}}),
            json!({"act": {"sub": "b", "iss": "x"}}),
            json!({"act": {"sub": "b", "act": []}}),
        ] {
            assert_eq!(read(bad.clone()), Err(MALFORMED_ACT), "{bad}");
        }
        let deep = json!({"act": {"sub": "1", "act": {"sub": "2", "act": {"sub": "3",
            "act": {"sub": "4", "act": {"sub": "5"}}}}}});
        assert_eq!(read(deep), Err(TOO_DEEP));
        assert_eq!(actor_chain(b"not json"), Err(MALFORMED_ACT));
    }

    #[test]
    fn scopes_only_narrow_to_what_both_have() {
        let vocab: BTreeMap<String, String> = [("read", ""), ("write", ""), ("admin", "")]
            .map(|(a, b)| (a.into(), b.into()))
            .into();
        let subject = v(&["read", "write", "admin"]);
        let client = v(&["read", "write", "other"]);
        assert_eq!(
            exchange_scope(None, &subject, &client, &vocab),
            Ok(v(&["read", "write"]))
        );
        assert_eq!(
            exchange_scope(Some(&v(&["write"])), &subject, &client, &vocab),
            Ok(v(&["write"]))
        );
        for widened in [&["admin"][..], &["other"], &["read", "admin"]] {
            assert_eq!(
                exchange_scope(Some(&v(widened)), &subject, &client, &vocab),
                Err(OAuthError::InvalidScope),
                "{widened:?}"
            );
        }
        assert_eq!(
            exchange_scope(None, &v(&["admin"]), &client, &vocab),
            Err(OAuthError::InvalidScope),
            "nothing in common"
        );
        let unknown: BTreeMap<String, String> = [("write".into(), String::new())].into();
        assert_eq!(
            exchange_scope(None, &subject, &client, &unknown),
            Ok(v(&["write"])),
            "a scope the issuer no longer knows is not passed on"
        );
    }
}
