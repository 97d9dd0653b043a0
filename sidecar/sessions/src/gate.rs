//! A request of a policy with sessions, before and after the verifier decides it: the session
//! cookie opened (a cookie that does not open is no session), ended past its lifetime,
//! refreshed when due, checked against cross-site use, and turned into the `Authorization`
//! header the verifier reads; our cookies removed from what the app gets. A refused browser
//! navigation without credentials is sent to log in.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use scopegate_core::answer::Refusal;
use scopegate_core::session::{LOGIN_COOKIE, SESSION_COOKIE};
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;

use crate::flight::{self, ends_session};
use crate::keys::Keyring;
use crate::login::{self, Authorize};
use crate::metrics::Event;
use crate::state::{LOGIN_TTL_SECS, Login, Session};
use crate::{Compiled, Sessions, cookies, reply};

/// What the sessions made of a request before the verifier decides it.
#[derive(Debug)]
pub struct Prepared {
    /// The request carries the session's access token (set from the cookie).
    from_cookie: bool,
    /// A browser's navigation on a session path without a bearer token: if it is refused for
    /// want of credentials, it is sent to log in.
    may_login: bool,
    /// The path is one of the section's session paths.
    session_path: bool,
    /// Where a login started now returns to.
    return_to: String,
    /// The `Set-Cookie`s the answer carries: a refreshed session, or its end; a login's.
    set_cookies: Vec<HeaderValue>,
}

impl Prepared {
    /// Whether the request is authenticated by the session cookie.
    pub fn from_cookie(&self) -> bool {
        self.from_cookie
    }
}

/// Adds `Cookie` to the answer's `Vary` (RFC 9110 §12.5.5): merged into the `Vary` the app
/// sent, never twice, and a `Vary: *` left as it is (it varies by everything already).
fn vary_by_cookie(headers: &mut HeaderMap) {
    let tokens = || {
        headers
            .get_all(header::VARY)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
    };
    if tokens().any(|t| t == b"*" || t.eq_ignore_ascii_case(b"cookie")) {
        return;
    }
    let mut merged: Vec<u8> = Vec::new();
    for value in headers.get_all(header::VARY) {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            merged.extend_from_slice(value);
            merged.extend_from_slice(b", ");
        }
    }
    merged.extend_from_slice(b"Cookie");
    if let Ok(value) = HeaderValue::from_bytes(&merged) {
        headers.insert(header::VARY, value);
    }
}

/// Methods that change nothing (RFC 9110 §9.2.1): the only ones a cross-site request may use
/// with the cookie.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a request comes from the app's own origin: `Origin` names it, or the browser says
/// `Sec-Fetch-Site: same-origin` (a header no page can set).
pub(crate) fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let origin_matches = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(origin));
    let fetch_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"same-origin"));
    origin_matches || fetch_site
}

/// What a due refresh came to.
enum Refresh {
    /// A new session and its cookie.
    Renewed(Box<Session>, HeaderValue),
    /// The issuer refused, or the new session cannot be sealed: the session ends.
    Ended(&'static str),
    /// No answer: the session goes on while its token lasts; after that, this many seconds
    /// pass before a request may have the issuer asked again.
    Unavailable(u64),
}

impl Sessions {
    /// Prepares a request: its session cookie opened and, when valid, its access token set as
    /// `Authorization` (a request that has an `Authorization` header of its own is left to
    /// it). `route_path` is the normalised path rules match, `forward_path` the one the app
    /// gets. `Err` is the answer (a cross-site request with the cookie, 403; a due refresh
    /// without an answer once the token expired, 503).
    pub async fn before<B>(
        &self,
        compiled: &Compiled,
        req: &mut Request<B>,
        route_path: &str,
        forward_path: &str,
    ) -> Result<Prepared, Response<ProxyBody>> {
        let now = unix_now();
        let has_authorization = req.headers().contains_key(header::AUTHORIZATION);
        let session_path = compiled.logs_in(route_path);
        let may_login =
            !has_authorization && login::is_navigation(req.method(), req.headers()) && session_path;
        let cookie = cookies::value(req.headers(), SESSION_COOKIE).map(str::to_owned);
        cookies::strip(req.headers_mut(), &[SESSION_COOKIE, LOGIN_COOKIE]);
        let mut prepared = Prepared {
            from_cookie: false,
            may_login,
            session_path,
            return_to: login::return_path(forward_path, req.uri().query()),
            set_cookies: Vec::new(),
        };
        let (Some(cookie), false) = (cookie, has_authorization) else {
            return Ok(prepared);
        };
        let Some(keys) = self.keys() else {
            return Ok(prepared);
        };
        let Some(mut session) = Session::open(&keys, now, &compiled.policy, &cookie) else {
            // Forged, tampered, of another policy, or sealed by a key retired or unknown here.
            tracing::debug!("a session cookie that does not open; no session");
            return Ok(prepared);
        };
        if now >= session.ends_at(compiled.config.max_lifetime_secs) {
            self.end(&mut prepared, &session, "its lifetime is over");
            return Ok(prepared);
        }
        if !is_safe(req.method()) && !same_origin(req.headers(), &compiled.origin) {
            self.metrics.count(Event::CrossSiteRefused);
            tracing::info!(
                method = %req.method(),
                subject = session.subject.as_deref().unwrap_or("-"),
                "a state-changing request with the session cookie from another origin; refused"
            );
            return Err(reply::page(
                StatusCode::FORBIDDEN,
                "This request did not come from this site's own pages.",
            ));
        }
        if session.refresh_due(now) {
            match self.refresh(compiled, &keys, &session, now).await {
                Refresh::Renewed(renewed, cookie) => {
                    session = *renewed;
                    prepared.set_cookies.push(cookie);
                }
                Refresh::Ended(why) => {
                    self.end(&mut prepared, &session, why);
                    return Ok(prepared);
                }
                Refresh::Unavailable(_) if now < session.expires_at => {}
                Refresh::Unavailable(retry_after) => {
                    let mut answer = reply::page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The session could not be renewed just now. Try again in a moment.",
                    );
                    answer
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                    return Err(answer);
                }
            }
        }
        let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", session.access_token))
        else {
            self.end(&mut prepared, &session, "its token is no header value");
            return Ok(prepared);
        };
        bearer.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, bearer);
        prepared.from_cookie = true;
        Ok(prepared)
    }

    /// The answer to a request the verifier refused, when the sessions have one: a browser's
    /// navigation refused for want of credentials (or with a session token the verifier
    /// refused, which ends the session) is sent to log in; its login cookie goes on the answer
    /// with [`Sessions::finish`]. `None`: the usual refusal.
    pub fn refused(
        &self,
        compiled: &Compiled,
        prepared: &mut Prepared,
        refusal: &Refusal,
    ) -> Option<Response<ProxyBody>> {
        match refusal {
            Refusal::InvalidToken if prepared.from_cookie => {
                // Revoked (the feed), or under keys this verifier no longer trusts.
                prepared.set_cookies.push(cookies::clear(SESSION_COOKIE));
                prepared.from_cookie = false;
                self.metrics.count(Event::Ended);
                tracing::info!("session ended: its access token is refused");
            }
            Refusal::NoCredentials => {}
            _ => return None,
        }
        if !prepared.may_login {
            return None;
        }
        let (redirect, cookie) = self.login(compiled, &prepared.return_to)?;
        prepared.set_cookies.push(cookie);
        Some(redirect)
    }

    /// The redirect that starts a login, and its login cookie: `state` and the PKCE verifier
    /// sealed with the return path. `None` when no key seals (sessions are off).
    fn login(
        &self,
        compiled: &Compiled,
        return_to: &str,
    ) -> Option<(Response<ProxyBody>, HeaderValue)> {
        let now = unix_now();
        let keys = self.keys()?;
        let login = Login {
            state: login::random_value()?,
            verifier: login::random_value()?,
            return_to: return_to.to_owned(),
            started_at: now,
        };
        let sealed = login.seal(&keys, now, &compiled.policy)?;
        let config = &compiled.config;
        let url = Authorize {
            endpoint: &config.authorization_endpoint,
            client_id: &config.client_id,
            redirect_uri: &config.redirect_uri,
            scopes: &config.scopes,
            audience: &config.audience,
            state: &login.state,
            verifier: &login.verifier,
        }
        .url();
        let cookie = cookies::set(LOGIN_COOKIE, &sealed, LOGIN_TTL_SECS)?;
        self.metrics.count(Event::LoginRedirect);
        Some((reply::redirect(StatusCode::FOUND, &url), cookie))
    }

    /// Finishes the answer to a prepared request (the app's, or a refusal): the app's
    /// `Set-Cookie`s for our cookies removed; `Vary: Cookie` when the cookie authenticated the
    /// request or the path is a session path, so that a shared cache never hands one user's
    /// page to another; `Cache-Control: private` on an answer to the cookie that has none;
    /// then the session's own `Set-Cookie`, if any, with `no-store`.
    pub fn finish(&self, prepared: Prepared, headers: &mut HeaderMap) {
        let removed = cookies::strip_set_cookies(headers, &[SESSION_COOKIE, LOGIN_COOKIE]);
        if removed > 0 {
            self.metrics.count(Event::AppCookieRemoved);
            tracing::warn!(
                removed,
                "the app's answer set a cookie named as the sidecar's; removed"
            );
        }
        if prepared.from_cookie || prepared.session_path || !prepared.set_cookies.is_empty() {
            vary_by_cookie(headers);
        }
        if prepared.from_cookie && !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
        if !prepared.set_cookies.is_empty() {
            for cookie in prepared.set_cookies {
                headers.append(header::SET_COOKIE, cookie);
            }
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }

    /// Ends a session: its cookie is cleared with the answer.
    fn end(&self, prepared: &mut Prepared, session: &Session, why: &'static str) {
        prepared.set_cookies.push(cookies::clear(SESSION_COOKIE));
        self.metrics.count(Event::Ended);
        tracing::info!(
            subject = session.subject.as_deref().unwrap_or("-"),
            reason = why,
            "session ended"
        );
    }

    /// Refreshes a session whose token is due: once per refresh token in this process,
    /// however many requests need it together.
    async fn refresh(
        &self,
        compiled: &Compiled,
        keys: &Keyring,
        session: &Session,
        now: i64,
    ) -> Refresh {
        let Some(refresh_token) = session.refresh_token.clone() else {
            return if now < session.expires_at {
                Refresh::Unavailable(1)
            } else {
                Refresh::Ended("its token expired and it has no refresh token")
            };
        };
        let client = compiled.issuer.clone();
        let metrics = self.metrics.clone();
        let subject = session.subject.clone();
        let token = refresh_token.clone();
        let outcome = self
            .flights
            .refresh(&refresh_token, move || async move {
                let outcome = client.refresh(&token).await;
                match &outcome {
                    Ok(_) => {
                        metrics.count(Event::Refreshed);
                        tracing::info!(subject = subject.as_deref().unwrap_or("-"), "session refreshed");
                    }
                    Err(failure) if ends_session(failure) => {
                        metrics.count(Event::RefreshRefused);
                        tracing::info!(subject = subject.as_deref().unwrap_or("-"), error = %failure, "session refresh refused");
                    }
                    Err(failure) => {
                        metrics.count(Event::RefreshUnavailable);
                        tracing::warn!(reason = failure.reason(), error = %failure, "session refresh failed; the session goes on while its token lasts");
                    }
                }
                outcome.map(Arc::new)
            })
            .await;
        let granted = match outcome {
            Ok(Ok(granted)) => granted,
            Ok(Err(failure)) if ends_session(&failure) => {
                return Refresh::Ended("the issuer refused its refresh");
            }
            // The failure is kept at most this long: then a request asks again.
            Ok(Err(_)) => return Refresh::Unavailable(flight::RETRY_AFTER_FAILURE.as_secs()),
            // A place in the map frees as soon as any refresh is done.
            Err(busy) => {
                tracing::warn!(error = %busy, "session refresh not started");
                return Refresh::Unavailable(1);
            }
        };
        let renewed = Session {
            access_token: granted.access_token.clone(),
            refresh_token: granted.refresh_token.clone().or(Some(refresh_token)),
            expires_at: now + i64::try_from(granted.lifetime.as_secs()).unwrap_or(i64::MAX / 2),
            obtained_at: now,
            started_at: session.started_at,
            subject: session.subject.clone(),
        };
        let max_age = renewed.ends_at(compiled.config.max_lifetime_secs) - now;
        match renewed
            .seal(keys, now, &compiled.policy)
            .and_then(|sealed| cookies::set(SESSION_COOKIE, &sealed, max_age))
        {
            Some(cookie) => Refresh::Renewed(Box::new(renewed), cookie),
            None => Refresh::Ended("the renewed session cannot be sealed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_joins_the_vary_the_app_sent_once() {
        let vary = |sent: &[&str]| {
            let mut h = HeaderMap::new();
            for v in sent {
                h.append(header::VARY, HeaderValue::from_str(v).unwrap());
            }
            vary_by_cookie(&mut h);
            let all: Vec<&str> = h
                .get_all(header::VARY)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            all.join(" | ")
        };
        assert_eq!(vary(&[]), "Cookie");
        assert_eq!(vary(&["Accept-Encoding"]), "Accept-Encoding, Cookie");
        assert_eq!(
            vary(&["Accept, Origin", "Accept-Encoding"]),
            "Accept, Origin, Accept-Encoding, Cookie"
        );
        assert_eq!(vary(&["accept, cookie"]), "accept, cookie");
        assert_eq!(vary(&["Origin", " COOKIE "]), "Origin |  COOKIE ");
        assert_eq!(vary(&["*"]), "*");
        assert_eq!(vary(&["Origin, *"]), "Origin, *");
        assert_eq!(vary(&[""]), "Cookie");
    }

    #[test]
    fn only_the_apps_origin_or_a_same_origin_fetch_passes() {
        let check = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            same_origin(&h, "https://app.example")
        };
        assert!(check(&[("origin", "https://app.example")]));
        assert!(check(&[("origin", "HTTPS://APP.EXAMPLE")]));
        assert!(check(&[("sec-fetch-site", "same-origin")]));
        assert!(!check(&[]));
        assert!(!check(&[("origin", "https://evil.example")]));
        assert!(!check(&[("origin", "https://app.example.evil.example")]));
        assert!(!check(&[("origin", "http://app.example")]));
        assert!(!check(&[("origin", "null")]));
        assert!(!check(&[("sec-fetch-site", "same-site")]));
        assert!(!check(&[("sec-fetch-site", "cross-site")]));
        assert!(is_safe(&Method::GET) && !is_safe(&Method::POST) && !is_safe(&Method::PATCH));
    }
}
