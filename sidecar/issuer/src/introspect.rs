//! `/oauth2/introspect` (RFC 7662): for authenticated confidential clients only. A token is
//! active when the issuer signed it, it has not expired, and no revocation hits it: its
//! jti, its client's or subject's cut-off, or (for a refresh token) its family. A caller sees
//! tokens issued to it, or carrying an audience its own namespace owns (a resource server
//! introspecting what it receives); everything else is exactly `{"active": false}`. Audiences
//! the caller may merely get tokens for give it no view of other clients' tokens.

use http::{Request, Response};
use hyper::body::Incoming;
use scopegate_core::clients::RegisteredClient;
use scopegate_sidecar_kit::body::ProxyBody;
use serde_json::{Value, json};

use crate::client_request::{self, ClientRequest, PublicClients};
use crate::error::OAuthError;
use crate::form::Form;
use crate::limits::Endpoint;
use crate::ops;
use crate::refresh::{self, Family};
use crate::store;
use crate::{Context, IssuerSettings, reply};
use scopegate_core::jose::json::{self, Audience, Claims};
use scopegate_core::jose::jws::{self, Typ};

/// Reads an access token this issuer signed (any time: expiry is the caller's to judge).
pub fn read_access_token(settings: &IssuerSettings, token: &str) -> Option<Claims> {
    read_access_token_and(settings, token, |_| ()).map(|(claims, ())| claims)
}

/// Reads an access token this issuer signed like [`read_access_token`], and what `more`
/// reads from its verified payload (claims that [`Claims`] does not keep).
pub fn read_access_token_and<T>(
    settings: &IssuerSettings,
    token: &str,
    more: impl FnOnce(&[u8]) -> T,
) -> Option<(Claims, T)> {
    let compact = jws::parse(token).ok()?;
    if compact.typ != Typ::AtJwt {
        return None;
    }
    compact.verify_with(&settings.keys.verify).ok()?;
    let claims = json::parse_claims(compact.payload()).ok()?;
    if claims.iss.as_deref() != Some(settings.config.url.as_str()) {
        return None;
    }
    let more = more(compact.payload());
    Some((claims, more))
}

fn audiences(aud: &Option<Audience>) -> Vec<String> {
    match aud {
        Some(Audience::One(a)) => vec![a.clone()],
        Some(Audience::Many(list)) => list.clone(),
        None => vec![],
    }
}

/// Answers an introspection request.
pub async fn handle(ctx: &Context<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    let request =
        match client_request::open(ctx, req, Endpoint::Introspect, PublicClients::Refused).await {
            Ok(request) => request,
            Err(answer) => return answer,
        };
    let ClientRequest {
        ref form,
        client,
        now,
        ..
    } = request;
    match introspect(ctx, client, form, now).await {
        Ok(body) => reply::credentials(&body),
        Err(err) => reply::error(&request.failed(err).await),
    }
}

async fn introspect(
    ctx: &Context<'_>,
    caller: &RegisteredClient,
    form: &Form,
    now: i64,
) -> Result<Value, OAuthError> {
    let token = form.require("token")?;
    let inactive = json!({"active": false});
    let refresh_first = form.get("token_type_hint") == Some("refresh_token");
    let answer = if refresh_first {
        match refresh_info(ctx, token, now).await? {
            Some(info) => Some(info),
            None => access_info(ctx, token, now).await?,
        }
    } else {
        match access_info(ctx, token, now).await? {
            Some(info) => Some(info),
            None => refresh_info(ctx, token, now).await?,
        }
    };
    let Some((info, client_id, auds)) = answer else {
        return Ok(inactive);
    };
    let visible =
        client_id == caller.client_id || auds.iter().any(|a| caller.owned_audiences.contains(a));
    Ok(if visible { info } else { inactive })
}

type Info = Option<(Value, String, Vec<String>)>;

async fn access_info(ctx: &Context<'_>, token: &str, now: i64) -> Result<Info, OAuthError> {
    let settings = ctx.settings;
    // The actor chain of an exchanged token (RFC 8693 §4.1), answered as the token says it.
    let actor = |payload: &[u8]| {
        serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|mut claims| claims.get_mut("act").map(Value::take))
    };
    let Some((claims, act)) = read_access_token_and(settings, token, actor) else {
        return Ok(None);
    };
    let (Some(exp), Some(iat), Some(jti), Some(client_id), Some(sub)) = (
        claims.exp,
        claims.iat,
        &claims.jti,
        &claims.client_id,
        &claims.sub,
    ) else {
        return Ok(None);
    };
    let live = exp > now && claims.nbf.is_none_or(|nbf| nbf <= now + settings.leeway);
    if !live || settings.client_cut_off(client_id, iat) {
        return Ok(None);
    }
    let store = ctx.issuer.store.as_ref();
    if store.jti_revoked(jti).await? {
        return Ok(None);
    }
    if store
        .subject_cutoff(sub)
        .await?
        .is_some_and(|before| iat < before)
    {
        return Ok(None);
    }
    let auds = audiences(&claims.aud);
    let mut info = json!({
        "active": true,
        "token_type": "Bearer",
        "client_id": client_id,
        "sub": sub,
        "aud": claims.aud.as_ref().map(|a| match a {
            Audience::One(a) => json!(a),
            Audience::Many(list) => json!(list),
        }),
        "iss": settings.config.url,
        "exp": exp,
        "iat": iat,
        "jti": jti,
    });
    if let Some(nbf) = claims.nbf {
        info["nbf"] = json!(nbf);
    }
    if let Some(act) = act {
        info["act"] = act;
    }
    if let Some(scope) = claims.scope.filter(|s| !s.is_empty()) {
        info["scope"] = json!(scope);
    }
    Ok(Some((info, client_id.clone(), auds)))
}

/// The family of a genuine refresh token, whatever its state.
pub async fn family_of(
    ctx: &Context<'_>,
    token: &str,
) -> Result<Option<(String, Family, bool)>, OAuthError> {
    let Some(parsed) = refresh::parse(token) else {
        return Ok(None);
    };
    let Some(read) =
        store::read::<Family>(ctx.issuer.store.as_ref(), &ops::family_key(&parsed.family)).await?
    else {
        return Ok(None);
    };
    if !read.value.is_genuine(&parsed) {
        return Ok(None);
    }
    let current = read.value.current.contains(&parsed.generation);
    Ok(Some((parsed.family, read.value, current)))
}

async fn refresh_info(ctx: &Context<'_>, token: &str, now: i64) -> Result<Info, OAuthError> {
    let Some((_, family, current)) = family_of(ctx, token).await? else {
        return Ok(None);
    };
    let until = family.usable_until(ctx.settings.refresh_idle);
    if !current || family.revoked || until <= now {
        return Ok(None);
    }
    if ctx
        .settings
        .client_cut_off(&family.client_id, family.created_at)
    {
        return Ok(None);
    }
    if ctx
        .issuer
        .store
        .subject_cutoff(&family.sub)
        .await?
        .is_some_and(|before| family.created_at < before)
    {
        return Ok(None);
    }
    let info = json!({
        "active": true,
        "token_type": "refresh_token",
        "client_id": family.client_id,
        "sub": family.sub,
        "scope": family.scope.join(" "),
        "iss": ctx.settings.config.url,
        "exp": until,
        "iat": family.created_at,
    });
    Ok(Some((
        info,
        family.client_id.clone(),
        family.audiences.clone(),
    )))
}
