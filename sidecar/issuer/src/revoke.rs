//! `/oauth2/revoke` (RFC 7009). The client authenticates (public clients with their
//! client_id); revoking a refresh token revokes its family and the access tokens issued
//! from it, revoking an access token puts its jti on the feed. Unknown, malformed and
//! already-revoked tokens answer 200. A token issued to another client is refused with
//! `unauthorized_client` and stays valid (RFC 7009 §2.1: the request is refused).

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use scopegate_core::clients::RegisteredClient;
use scopegate_sidecar_kit::body::ProxyBody;

use crate::client_request::{self, ClientRequest, PublicClients};
use crate::error::OAuthError;
use crate::form::Form;
use crate::introspect::{family_of, read_access_token};
use crate::limits::Endpoint;
use crate::ops;
use crate::{Context, reply};

/// Answers a revocation request.
pub async fn handle(ctx: &Context<'_>, req: Request<Incoming>) -> Response<ProxyBody> {
    let request =
        match client_request::open(ctx, req, Endpoint::Revoke, PublicClients::Allowed).await {
            Ok(request) => request,
            Err(answer) => return answer,
        };
    let ClientRequest {
        ref form,
        client,
        now,
        ..
    } = request;
    match revoke(ctx, client, form, now).await {
        Ok(()) => {
            let mut response = reply::status(StatusCode::OK);
            reply::no_store(&mut response);
            response
        }
        Err(err) => reply::error(&request.failed(err).await),
    }
}

async fn revoke(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    form: &Form,
    now: i64,
) -> Result<(), OAuthError> {
    let token = form.require("token")?;
    if let Some(claims) = read_access_token(ctx.settings, token) {
        if claims.client_id.as_deref() != Some(client.client_id.as_str()) {
            return Err(OAuthError::UnauthorizedClient);
        }
        if let (Some(jti), Some(exp)) = (claims.jti, claims.exp) {
            tracing::info!(target: "scopegate::audit", action = "revoke_access_token", client_id = %client.client_id, "access token revoked");
            ops::revoke_jtis(ctx, vec![(jti, exp)], now).await?;
        }
        return Ok(());
    }
    if let Some((id, family, _)) = family_of(ctx, token).await? {
        if family.client_id != client.client_id {
            return Err(OAuthError::UnauthorizedClient);
        }
        tracing::info!(target: "scopegate::audit", action = "revoke_refresh_token", client_id = %client.client_id, "refresh family revoked");
        ops::revoke_family(ctx, &id, now).await?;
    }
    Ok(())
}
