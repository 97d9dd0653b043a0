//! The sidecar's own paths on a policy with sessions: the callback that ends a login, and
//! logout. Every other path under the reserved prefix is the sidecar's too, and not found.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use scopegate_core::session::{CALLBACK_PATH, LOGIN_COOKIE, LOGOUT_PATH, SESSION_COOKIE};
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::unix_now;
use subtle::ConstantTimeEq as _;

use crate::gate::same_origin;
use crate::login::{self, Callback};
use crate::metrics::Event;
use crate::state::{Login, Session};
use crate::{Compiled, Sessions, cookies, reply};

/// Why a callback was refused: logged, never shown (the page is the same for all).
#[derive(Debug, Clone, Copy)]
enum Refused {
    Query,
    NoKeys,
    NoLogin,
    State,
    Issuer,
    NoCode,
    Code,
    Unsealable,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Refused::Query => "the query is malformed",
            Refused::NoKeys => "no session key is in force",
            Refused::NoLogin => "no login cookie of this browser, or it expired",
            Refused::State => "state missing or not this browser's",
            Refused::Issuer => "iss missing or not the issuer's",
            Refused::NoCode => "no code",
            Refused::Code => "the issuer refused the code",
            Refused::Unsealable => "the session cannot be sealed",
        }
    }
}

impl Sessions {
    /// Answers a request for a reserved path (`path` normalised) from `client` (the client
    /// address as the policy's `trustedProxies` define it).
    pub async fn serve<B>(
        &self,
        compiled: &Compiled,
        req: &Request<B>,
        path: &str,
        client: IpAddr,
    ) -> Response<ProxyBody> {
        match path {
            CALLBACK_PATH => self.callback(compiled, req, client).await,
            LOGOUT_PATH => self.logout(compiled, req).await,
            _ => reply::page(StatusCode::NOT_FOUND, "Not found."),
        }
    }

    /// The end of a login: the browser's login cookie must hold the `state` that came back,
    /// `iss` must be the issuer (RFC 9207), and the code is redeemed with the login's PKCE
    /// verifier. The session cookie is set, the login cookie cleared (so the callback cannot
    /// be replayed), and the browser sent back where it started. A code is presented to the
    /// issuer only while `client`, and all clients together, have refused codes left
    /// ([`crate::budget`]).
    async fn callback<B>(
        &self,
        compiled: &Compiled,
        req: &Request<B>,
        client: IpAddr,
    ) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        let now = unix_now();
        let checked = (|| {
            let callback = Callback::parse(req.uri().query()).map_err(|_| Refused::Query)?;
            let keys = self.keys().ok_or(Refused::NoKeys)?;
            let login = cookies::value(req.headers(), LOGIN_COOKIE)
                .and_then(|value| Login::open(&keys, now, &compiled.policy, value))
                .ok_or(Refused::NoLogin)?;
            let state = callback.state.as_deref().ok_or(Refused::State)?;
            if !bool::from(state.as_bytes().ct_eq(login.state.as_bytes())) {
                return Err(Refused::State);
            }
            if callback.iss.as_deref() != Some(compiled.config.issuer.as_str()) {
                return Err(Refused::Issuer);
            }
            Ok((callback, login, keys))
        })();
        let (callback, login, keys) = match checked {
            Ok(checked) => checked,
            Err(refused) => return self.login_failed(refused),
        };
        if let Some(error) = &callback.error {
            self.metrics.count(Event::LoginFailed);
            let code = shown_error(error);
            tracing::info!(error = code, "the issuer answered the login with an error");
            let mut page = reply::page(
                StatusCode::FORBIDDEN,
                &format!("The login did not succeed ({code}). Go back and try again."),
            );
            page.headers_mut()
                .append(header::SET_COOKIE, cookies::clear(LOGIN_COOKIE));
            return page;
        }
        let Some(code) = callback.code.as_deref() else {
            return self.login_failed(Refused::NoCode);
        };
        if let Err(spent) = self.codes.check(client) {
            self.metrics.count(Event::LoginFailed);
            tracing::warn!(reason = %spent, "a callback's code not presented to the issuer");
            let mut page = reply::page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many logins failed just now. Try again in a minute.",
            );
            let headers = page.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(60u64));
            headers.append(header::SET_COOKIE, cookies::clear(LOGIN_COOKIE));
            return page;
        }
        let granted = match compiled.issuer.redeem(code, &login.verifier).await {
            Ok(granted) => granted,
            Err(failure) if failure.is_refusal() => {
                self.codes.refused(client);
                tracing::info!(error = %failure, "code refused at the token endpoint");
                return self.login_failed(Refused::Code);
            }
            Err(failure) => {
                self.metrics.count(Event::LoginFailed);
                tracing::warn!(reason = failure.reason(), error = %failure, "the issuer did not redeem the code");
                let mut page = reply::page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The login could not be completed just now. Go back and try again.",
                );
                page.headers_mut()
                    .append(header::SET_COOKIE, cookies::clear(LOGIN_COOKIE));
                return page;
            }
        };
        let session = Session {
            subject: subject_of(&granted.access_token),
            access_token: granted.access_token,
            refresh_token: granted.refresh_token,
            expires_at: now + i64::try_from(granted.lifetime.as_secs()).unwrap_or(i64::MAX / 2),
            obtained_at: now,
            started_at: now,
        };
        let max_age = session.ends_at(compiled.config.max_lifetime_secs) - now;
        let Some(cookie) = session
            .seal(&keys, now, &compiled.policy)
            .and_then(|sealed| cookies::set(SESSION_COOKIE, &sealed, max_age))
        else {
            return self.login_failed(Refused::Unsealable);
        };
        // Sealed by us, checked again all the same: never anywhere but this origin.
        let back = if login::is_local_path(&login.return_to) {
            login.return_to.as_str()
        } else {
            "/"
        };
        let mut response = reply::redirect(StatusCode::FOUND, back);
        let headers = response.headers_mut();
        headers.append(header::SET_COOKIE, cookie);
        headers.append(header::SET_COOKIE, cookies::clear(LOGIN_COOKIE));
        self.metrics.count(Event::LoginCompleted);
        tracing::info!(
            subject = session.subject.as_deref().unwrap_or("-"),
            refreshable = session.refresh_token.is_some(),
            "session started"
        );
        response
    }

    /// The answer to a refused callback: one page for every reason, the login cookie cleared.
    fn login_failed(&self, refused: Refused) -> Response<ProxyBody> {
        self.metrics.count(Event::LoginFailed);
        tracing::info!(reason = refused.reason(), "login refused at the callback");
        let mut page = reply::page(
            StatusCode::BAD_REQUEST,
            "The login could not be completed. Go back to the page you wanted and try again.",
        );
        page.headers_mut()
            .append(header::SET_COOKIE, cookies::clear(LOGIN_COOKIE));
        page
    }

    /// Logout: a POST from the app's own origin. The session's refresh token is revoked at
    /// the issuer (its family and the access tokens issued from it with it) unless it was
    /// here lately ([`crate::revoked`]), the cookie cleared, and the browser sent to
    /// `afterLogout`.
    async fn logout<B>(&self, compiled: &Compiled, req: &Request<B>) -> Response<ProxyBody> {
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        if !same_origin(req.headers(), &compiled.origin) {
            self.metrics.count(Event::CrossSiteRefused);
            tracing::info!("a logout from another origin; refused");
            return reply::page(
                StatusCode::FORBIDDEN,
                "This request did not come from this site's own pages.",
            );
        }
        let now = unix_now();
        let session = self.keys().and_then(|keys| {
            cookies::value(req.headers(), SESSION_COOKIE)
                .and_then(|value| Session::open(&keys, now, &compiled.policy, value))
        });
        if let Some(session) = &session {
            if let Some(refresh_token) = &session.refresh_token
                && !self.revoked.lately(refresh_token)
            {
                match compiled.issuer.revoke(refresh_token).await {
                    Ok(()) => {
                        self.revoked.note(refresh_token);
                        self.metrics.count(Event::Revoked);
                    }
                    Err(failure) => tracing::warn!(
                        subject = session.subject.as_deref().unwrap_or("-"),
                        reason = failure.reason(),
                        error = %failure,
                        "logout: the refresh token could not be revoked; the cookie is cleared all the same"
                    ),
                }
            }
            tracing::info!(
                subject = session.subject.as_deref().unwrap_or("-"),
                "logout"
            );
        }
        self.metrics.count(Event::Logout);
        let mut response = reply::redirect(StatusCode::SEE_OTHER, &compiled.config.after_logout);
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookies::clear(SESSION_COOKIE));
        response
    }
}

/// 405 naming the methods allowed.
fn method_not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut page = reply::page(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
    page.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    page
}

/// An `error` code as the page shows it: a registered-looking code, or `error`.
fn shown_error(error: &str) -> &str {
    let plain = (1..=64).contains(&error.len())
        && error
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain { error } else { "error" }
}

/// The `sub` of an access token, read unverified: for logs only (the verifier checks the
/// token on every request). At most 256 characters.
fn subject_of(access_token: &str) -> Option<String> {
    let compact = scopegate_core::jose::jws::parse(access_token).ok()?;
    let claims = scopegate_core::jose::json::parse_claims(compact.payload()).ok()?;
    claims.sub.filter(|s| s.len() <= 256)
}
