//! Step 1: which login choices a client may offer, and the chooser page that lets the browser
//! pick one (no script, `default-src 'none'`). The request waits in the store under a
//! one-time id.

use http::Response;
use scopegate_core::clients::RegisteredClient;
use scopegate_core::upstream::LOCAL;
use scopegate_sidecar_kit::body::{ProxyBody, full};
use scopegate_sidecar_kit::unix_now;

use crate::error::OAuthError;
use crate::login::{self, LOGIN_TTL_SECS, LoginRecord};
use crate::store::{self, hashed_key};
use crate::{Context, random_token};

use super::{Next, PATH_PREFIX, browser_page_headers};

/// The CSP of the chooser page: nothing loads, nothing frames it, forms post to us only.
pub const CHOOSER_CSP: &str =
    "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The login choices `client_id` may offer, in configuration order, `local` last.
pub fn choices(role: &crate::IssuerSettings, client_id: &str) -> Vec<String> {
    let mut all: Vec<String> = role
        .config
        .upstreams
        .iter()
        .map(|u| u.name.clone())
        .collect();
    if role.config.login_url.is_some() {
        all.push(LOCAL.to_owned());
    }
    if let Some(allowed) = role.upstream_choices.get(client_id) {
        all.retain(|c| allowed.contains(c));
    }
    all
}

/// Whether the request's `upstream` hint (if any) names a login choice the client may offer,
/// and the client has one at all: the checks of [`choose`], before anything is stored.
pub fn check_choice(
    role: &crate::IssuerSettings,
    client_id: &str,
    hint: Option<&str>,
) -> Result<(), OAuthError> {
    if role.config.upstreams.is_empty() {
        return match hint {
            Some(h) if h != LOCAL => Err(OAuthError::InvalidRequest(
                "the upstream is not offered to this client",
            )),
            _ => Ok(()),
        };
    }
    let choices = choices(role, client_id);
    match hint {
        Some(h) if !choices.iter().any(|c| c == h) => Err(OAuthError::InvalidRequest(
            "the upstream is not offered to this client",
        )),
        None if choices.is_empty() => Err(OAuthError::AccessDenied),
        _ => Ok(()),
    }
}

/// Decides where an authorization request goes. `None`: the app's own login (today's path).
pub async fn choose(
    ctx: &Context<'_>,
    client: &RegisteredClient,
    record: &LoginRecord,
    hint: Option<&str>,
) -> Result<Option<Next>, OAuthError> {
    let role = ctx.settings;
    if role.config.upstreams.is_empty() {
        return match hint {
            Some(h) if h != LOCAL => Err(OAuthError::InvalidRequest(
                "the upstream is not offered to this client",
            )),
            _ => Ok(None),
        };
    }
    let choices = choices(role, &client.client_id);
    let chosen = match hint {
        Some(h) if choices.iter().any(|c| c == h) => h.to_owned(),
        Some(_) => {
            return Err(OAuthError::InvalidRequest(
                "the upstream is not offered to this client",
            ));
        }
        None if choices.len() == 1 => choices[0].clone(),
        None if choices.is_empty() => return Err(OAuthError::AccessDenied),
        None => {
            let id = store_request(ctx, record).await?;
            return Ok(Some(Next::Page(chooser(role, &choices, &id))));
        }
    };
    if chosen == LOCAL {
        return Ok(None);
    }
    let id = store_request(ctx, record).await?;
    Ok(Some(Next::Redirect(format!(
        "{}{PATH_PREFIX}{chosen}/start?ar={id}",
        role.public_url
    ))))
}

pub(super) async fn store_request(
    ctx: &Context<'_>,
    record: &LoginRecord,
) -> Result<String, OAuthError> {
    let id = random_token(32);
    let key = hashed_key("upreq", &id);
    let now = unix_now();
    if !store::write(
        ctx.issuer.store.as_ref(),
        &key,
        None,
        record,
        now + LOGIN_TTL_SECS,
    )
    .await?
    {
        return Err(OAuthError::ServerError);
    }
    login::track_pending(ctx, &record.client_id, &key, now + LOGIN_TTL_SECS).await?;
    Ok(id)
}

pub(super) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The provider chooser: one link per choice, relative to `/oauth2/authorize`.
pub(super) fn chooser(
    role: &crate::IssuerSettings,
    choices: &[String],
    id: &str,
) -> Response<ProxyBody> {
    let mut items = String::new();
    for choice in choices {
        let label = if choice == LOCAL {
            "Sign in with your account".to_owned()
        } else {
            let display = role
                .config
                .upstreams
                .iter()
                .find(|u| &u.name == choice)
                .map_or(choice.as_str(), |u| u.display_name.as_str());
            format!("Continue with {display}")
        };
        items.push_str(&format!(
            "<li><a class=\"choice\" id=\"choice-{name}\" href=\"upstream/{name}/start?ar={id}\">{label}</a></li>",
            name = escape_html(choice),
            label = escape_html(&label),
        ));
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>Sign in</title></head>\
         <body><main><h1>Sign in</h1><ul>{items}</ul></main></body></html>"
    );
    let mut response = Response::new(full(html));
    browser_page_headers(response.headers_mut(), CHOOSER_CSP);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooser_text_is_escaped() {
        assert_eq!(
            escape_html("<b>\"x\"&'y'</b>\u{7}"),
            "&lt;b&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/b&gt;"
        );
    }
}
