//! `/oauth2/token` (RFC 6749 §3.2, §4.1.3, §4.4, §6): client_credentials,
//! authorization_code with PKCE S256, refresh_token with rotation, and token exchange
//! (RFC 8693, in [`crate::exchange`]).

use http::{Request, Response};
use hyper::body::Incoming;
use scopegate_core::clients::{RegisteredClient, TOKEN_EXCHANGE_GRANT};
use scopegate_sidecar_kit::body::ProxyBody;
use serde_json::{Value, json};

use crate::access::{self, Grant, Planned};
use crate::client_request::{self, ClientRequest, PublicClients};
use crate::codes::{CodeRecord, Redeemed};
use crate::error::OAuthError;
use crate::exchange;
use crate::form::Form;
use crate::grant;
use crate::limits::Endpoint;
use crate::ops::{self, Redemption, Refreshed};
use crate::refresh::{self, Family};
use crate::store::{self, hashed_key};
use crate::{Context, random_token, reply};

/// Grant types the issuer offers.
pub const GRANT_TYPES: [&str; 4] = [
    "authorization_code",
    "client_credentials",
    "refresh_token",
    TOKEN_EXCHANGE_GRANT,
];

/// Answers a token request.
pub async fn handle(ctx: &Context<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    let request =
        match client_request::open(ctx, req, Endpoint::Token, PublicClients::Allowed).await {
            Ok(request) => request,
            Err(answer) => return answer,
        };
    let ClientRequest {
        ref form,
        client,
        now,
        ..
    } = request;
    match grant(ctx, client, form, now).await {
        Ok(body) => reply::credentials(&body),
        Err(Refusal { error, counted }) => {
            tracing::info!(endpoint = "token", client_id = %client.client_id, error = error.code(), reason = %error, counted, "token request refused");
            if counted {
                reply::error(&request.failed(error).await)
            } else {
                reply::error(&error)
            }
        }
    }
}

/// A refused token request, and whether the refusal spends the failure budgets of the
/// caller's address and client (those that stop the address before any work).
struct Refusal {
    error: OAuthError,
    counted: bool,
}

impl From<OAuthError> for Refusal {
    fn from(error: OAuthError) -> Self {
        Refusal {
            error,
            counted: true,
        }
    }
}

async fn grant(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    form: &Form,
    now: i64,
) -> Result<Value, Refusal> {
    let grant_type = form.require("grant_type")?;
    if !GRANT_TYPES.contains(&grant_type) {
        return Err(OAuthError::UnsupportedGrantType.into());
    }
    if !client.grant_types.iter().any(|g| g == grant_type) {
        return Err(OAuthError::UnauthorizedClient.into());
    }
    Ok(match grant_type {
        "client_credentials" => client_credentials(ctx, client, form, now)?,
        "authorization_code" => authorization_code(ctx, client, form, now).await?,
        TOKEN_EXCHANGE_GRANT => {
            let rules = exchange::rules(client)?;
            // The client authenticated and may exchange: a refusal now is about the token it
            // presents (signed, so there is nothing to guess), its audiences or its scopes.
            // Counting those would let the senders of tokens the client accepts but the
            // issuer will not exchange (expired, revoked, without a common scope) spend the
            // address's failure budget, and with it lock the pod out of every grant.
            exchange::exchange(ctx, client, rules, form, now)
                .await
                .map_err(|error| Refusal {
                    error,
                    counted: false,
                })?
        }
        _ => refresh_token(ctx, client, form, now).await?,
    })
}

fn ttl(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn token_response(
    token: &str,
    exp: i64,
    now: i64,
    scope: &[String],
    refresh: Option<String>,
) -> Value {
    let mut body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": exp - now,
        "scope": scope.join(" "),
    });
    if let Some(refresh) = refresh {
        body["refresh_token"] = Value::String(refresh);
    }
    body
}

fn client_credentials(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    form: &Form,
    now: i64,
) -> Result<Value, OAuthError> {
    if client.public {
        return Err(OAuthError::UnauthorizedClient);
    }
    let settings = ctx.settings;
    let requested = grant::parse_scope(form.get("scope"))?;
    let scope = grant::grant_scope(requested.as_deref(), client, &settings.config.scopes)?;
    let aud = grant::audiences(
        &form.all("resource"),
        &client.audiences,
        &grant::client_audiences(client, &settings.config.url),
    )?;
    let planned = access::plan(settings, now, ttl(settings.config.access_token_ttl_secs))?;
    let token = planned.sign(
        &settings.config.url,
        &Grant {
            sub: &client.client_id,
            client_id: &client.client_id,
            aud: &aud,
            scope: &scope,
            act: None,
        },
        &ctx.issuer.rng,
    )?;
    Ok(token_response(&token, planned.exp, now, &scope, None))
}

async fn authorization_code(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    form: &Form,
    now: i64,
) -> Result<Value, OAuthError> {
    let settings = ctx.settings;
    let code = form.require("code")?;
    let redirect_uri = form.get("redirect_uri");
    let verifier = form.require("code_verifier")?;
    if !grant::is_code_verifier(verifier) {
        return Err(OAuthError::InvalidRequest(
            "code_verifier must be 43 to 128 unreserved characters",
        ));
    }
    let resources = form.all("resource");
    let planned = access::plan(settings, now, ttl(settings.config.access_token_ttl_secs))?;
    let refresh = client.grant_types.iter().any(|g| g == "refresh_token");
    let family_id = refresh.then(|| random_token(16));
    let issued = Redeemed {
        jti: planned.jti.clone(),
        exp: planned.exp,
        family: family_id.clone(),
    };
    let key = hashed_key("code", code);
    let binding = |record: &CodeRecord| code_binding(record, client, redirect_uri, verifier);
    let check = |record: &CodeRecord| {
        if settings.client_cut_off(&record.client_id, record.issued_at) {
            return Err(OAuthError::InvalidGrant(
                "the code was issued before the client's cut-off",
            ));
        }
        grant::audiences(&resources, &record.audiences, &record.audiences).map(|_| ())
    };
    let record = match ops::redeem_code(ctx, &key, issued, now, binding, check).await? {
        Redemption::Won(record) => record,
        Redemption::Replayed => return Err(OAuthError::InvalidGrant("the code was used before")),
        Redemption::Unknown => return Err(OAuthError::InvalidGrant("unknown or expired code")),
    };
    refuse_if_subject_cut_off(ctx, &record, &planned, now).await?;
    let aud = grant::audiences(&resources, &record.audiences, &record.audiences)?;
    let refresh_token = match &family_id {
        Some(id) => Some(start_family(ctx, client, &record, &planned, id, now).await?),
        None => None,
    };
    let token = planned.sign(
        &settings.config.url,
        &Grant {
            sub: &record.sub,
            client_id: &client.client_id,
            aud: &aud,
            scope: &record.scope,
            act: None,
        },
        &ctx.issuer.rng,
    )?;
    Ok(token_response(
        &token,
        planned.exp,
        now,
        &record.scope,
        refresh_token,
    ))
}

/// Whether a code may be redeemed by this request: issued to `client`, the same
/// redirect URI as the authorization request (required when that named one), and a PKCE
/// verifier matching its challenge.
fn code_binding(
    record: &CodeRecord,
    client: &RegisteredClient,
    redirect_uri: Option<&str>,
    verifier: &str,
) -> Result<(), OAuthError> {
    if record.client_id != client.client_id {
        return Err(OAuthError::InvalidGrant(
            "the code was issued to another client",
        ));
    }
    // RFC 6749 §4.1.3: required when the authorization request named one, and equal.
    match redirect_uri {
        Some(uri) if uri != record.redirect_uri => {
            return Err(OAuthError::InvalidGrant(
                "redirect_uri differs from the authorization request",
            ));
        }
        None if !record.redirect_uri_omitted => {
            return Err(OAuthError::InvalidGrant(
                "redirect_uri is required: the authorization request named one",
            ));
        }
        _ => {}
    }
    if !grant::pkce_matches(verifier, &record.challenge) {
        return Err(OAuthError::InvalidGrant("PKCE verification failed"));
    }
    Ok(())
}

/// Refuses a redeemed code issued before its subject's cut-off, revoking the access token
/// planned for it (its `jti` is already recorded as the code's).
async fn refuse_if_subject_cut_off(
    ctx: &Context<'_>,
    record: &CodeRecord,
    planned: &Planned<'_>,
    now: i64,
) -> Result<(), OAuthError> {
    if ctx
        .issuer
        .store
        .subject_cutoff(&record.sub)
        .await?
        .is_some_and(|before| record.issued_at < before)
    {
        ops::revoke_jtis(ctx, vec![(planned.jti.clone(), planned.exp)], now).await?;
        return Err(OAuthError::InvalidGrant(
            "the subject's cut-off is later than the code",
        ));
    }
    Ok(())
}

/// Stores the refresh family `id` that a redeemed code starts and returns its first
/// refresh token. A family already stored under `id` means the code was used before.
async fn start_family(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    record: &CodeRecord,
    planned: &Planned<'_>,
    id: &str,
    now: i64,
) -> Result<String, OAuthError> {
    let family = Family {
        client_id: client.client_id.clone(),
        sub: record.sub.clone(),
        scope: record.scope.clone(),
        audiences: record.audiences.clone(),
        default_audiences: record.audiences.clone(),
        created_at: now,
        expires_at: now
            .saturating_add(ttl(ctx.settings.config.refresh_token_ttl_secs))
            .min(record.family_until.unwrap_or(i64::MAX)),
        secret: random_token(32),
        next_gen: 1,
        current: vec![0],
        parent: None,
        revoked: false,
        tokens: vec![(planned.jti.clone(), planned.exp)],
        last_used_at: Some(now),
    };
    if !ops::create_family(ctx, id, &family).await? {
        return Err(OAuthError::InvalidGrant("the code was used before"));
    }
    family.token(id, 0).ok_or(OAuthError::ServerError)
}

async fn refresh_token(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    form: &Form,
    now: i64,
) -> Result<Value, OAuthError> {
    let settings = ctx.settings;
    let presented = form.require("refresh_token")?;
    let unknown = OAuthError::InvalidGrant("unknown, expired or revoked refresh token");
    let parsed = refresh::parse(presented).ok_or(unknown.clone())?;
    let key = ops::family_key(&parsed.family);
    let read = store::read::<Family>(ctx.issuer.store.as_ref(), &key)
        .await?
        .ok_or(unknown.clone())?;
    let family = &read.value;
    if !family.is_genuine(&parsed) || family.client_id != client.client_id {
        return Err(unknown);
    }
    // Past its absolute end, or unused for refreshTokenIdle: a refresh token stolen from a
    // client that stopped using it is dead by now.
    if family.revoked || family.usable_until(settings.refresh_idle) <= now {
        return Err(unknown);
    }
    refuse_if_cut_off(ctx, family).await?;
    let requested = grant::parse_scope(form.get("scope"))?;
    let scope = grant::narrow_scope(requested.as_deref(), &family.scope)?;
    let aud = grant::audiences(
        &form.all("resource"),
        &family.audiences,
        &family.default_audiences,
    )?;
    let planned = access::plan(settings, now, ttl(settings.config.access_token_ttl_secs))?;
    let sub = family.sub.clone();
    let issued = (planned.jti.clone(), planned.exp);
    let (generation, family) = match ops::rotate_family(
        ctx,
        &parsed.family,
        read,
        parsed.generation,
        issued,
        now,
    )
    .await?
    {
        Refreshed::Rotated(generation, family) => (generation, family),
        Refreshed::Refused(why) => return Err(OAuthError::InvalidGrant(why)),
    };
    let refresh = family
        .token(&parsed.family, generation)
        .ok_or(OAuthError::ServerError)?;
    let token = planned.sign(
        &settings.config.url,
        &Grant {
            sub: &sub,
            client_id: &client.client_id,
            aud: &aud,
            scope: &scope,
            act: None,
        },
        &ctx.issuer.rng,
    )?;
    Ok(token_response(
        &token,
        planned.exp,
        now,
        &scope,
        Some(refresh),
    ))
}

/// Refuses a refresh family created before its client's or its subject's cut-off.
async fn refuse_if_cut_off(ctx: &Context<'_>, family: &Family) -> Result<(), OAuthError> {
    if ctx
        .settings
        .client_cut_off(&family.client_id, family.created_at)
    {
        return Err(OAuthError::InvalidGrant(
            "the grant is older than the client's cut-off",
        ));
    }
    if ctx
        .issuer
        .store
        .subject_cutoff(&family.sub)
        .await?
        .is_some_and(|before| family.created_at < before)
    {
        return Err(OAuthError::InvalidGrant(
            "the grant is older than the subject's cut-off",
        ));
    }
    Ok(())
}
