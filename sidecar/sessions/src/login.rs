//! The pure parts of a login: who is sent to log in, where they come back to, the
//! authorization request (code + PKCE S256, `state`, RFC 8707 `resource`) and the callback's
//! query.

use aws_lc_rs::digest;
use http::Method;
use http::header::{self, HeaderMap};
use scopegate_core::jose::b64;
use scopegate_sidecar_kit::form::{form_decode, form_encode};

/// Longest return path kept; a longer one returns to `/`.
pub const MAX_RETURN_LEN: usize = 2048;

/// Whether a request is a browser's top-level navigation: a GET or HEAD that accepts HTML,
/// and, when the browser says (`Sec-Fetch-Mode`), a navigation. A script's `fetch` or an
/// image gets the usual 401, never a redirect it cannot follow to a login page.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let accepts_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/html"))
        });
    let navigating = headers
        .get("sec-fetch-mode")
        .is_none_or(|mode| mode.as_bytes().eq_ignore_ascii_case(b"navigate"));
    accepts_html && navigating
}

/// Where a browser returns after login: the (normalised) path and the query it asked for,
/// when they are plainly a path of this origin; `/` otherwise. Never an absolute URL, a
/// scheme-relative `//host` (or `/\host`, which browsers read alike), or anything with a
/// control character, space or backslash, which browsers strip or fold into the same.
pub fn return_path(path: &str, query: Option<&str>) -> String {
    let candidate = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    if is_local_path(&candidate) {
        candidate
    } else {
        "/".to_owned()
    }
}

/// Whether `target` is a path of this origin to redirect to: starts with one `/` followed by
/// neither `/` nor `\`, visible ASCII only, no `\` anywhere, at most [`MAX_RETURN_LEN`].
pub fn is_local_path(target: &str) -> bool {
    let bytes = target.as_bytes();
    bytes.len() <= MAX_RETURN_LEN
        && bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.iter().all(|b| b.is_ascii_graphic() && *b != b'\\')
}

/// 32 random bytes, base64url: a `state` or a PKCE verifier (43 characters).
pub fn random_value() -> Option<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(b64::encode(&bytes))
}

/// The S256 challenge of a PKCE verifier (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    b64::encode(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref())
}

/// What an authorization request names.
pub struct Authorize<'a> {
    /// The authorization endpoint.
    pub endpoint: &'a str,
    /// The client.
    pub client_id: &'a str,
    /// The callback.
    pub redirect_uri: &'a str,
    /// The scopes asked for.
    pub scopes: &'a [String],
    /// The audience (`resource`).
    pub audience: &'a str,
    /// The login's `state`.
    pub state: &'a str,
    /// The login's PKCE verifier (its challenge is sent).
    pub verifier: &'a str,
}

impl Authorize<'_> {
    /// The URL the browser is sent to.
    pub fn url(&self) -> String {
        let mut params = vec![
            ("response_type", "code".to_owned()),
            ("client_id", self.client_id.to_owned()),
            ("redirect_uri", self.redirect_uri.to_owned()),
        ];
        if !self.scopes.is_empty() {
            params.push(("scope", self.scopes.join(" ")));
        }
        params.extend([
            ("resource", self.audience.to_owned()),
            ("state", self.state.to_owned()),
            ("code_challenge", challenge(self.verifier)),
            ("code_challenge_method", "S256".to_owned()),
        ]);
        let mut url = self.endpoint.to_owned();
        url.push(if url.contains('?') { '&' } else { '?' });
        let query: Vec<String> = params
            .iter()
            .map(|(name, value)| format!("{name}={}", form_encode(value)))
            .collect();
        url.push_str(&query.join("&"));
        url
    }
}

/// What came back to the callback.
#[derive(PartialEq, Eq)]
pub struct Callback {
    /// `code`.
    pub code: Option<String>,
    /// `state`.
    pub state: Option<String>,
    /// `iss` (RFC 9207).
    pub iss: Option<String>,
    /// `error`, when the login failed.
    pub error: Option<String>,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("iss", &self.iss)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Why a callback's query was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter is not form-encoded text.
    #[error("a parameter is not form-encoded UTF-8")]
    Encoding,
    /// `code`, `state`, `iss` or `error` appears twice.
    #[error("a parameter appears twice")]
    Repeated,
}

impl Callback {
    /// Parses the callback's query; other parameters (`error_description`, `scope`...) are
    /// ignored.
    pub fn parse(query: Option<&str>) -> Result<Callback, QueryError> {
        let mut callback = Callback {
            code: None,
            state: None,
            iss: None,
            error: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "code" => &mut callback.code,
                "state" => &mut callback.state,
                "iss" => &mut callback.iss,
                "error" => &mut callback.error,
                _ => continue,
            };
            if slot.is_some() {
                return Err(QueryError::Repeated);
            }
            *slot = Some(form_decode(value).ok_or(QueryError::Encoding)?);
        }
        Ok(callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Uri};

    fn nav(method: Method, accept: &str, mode: Option<&str>) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        if let Some(mode) = mode {
            h.insert("sec-fetch-mode", HeaderValue::from_str(mode).unwrap());
        }
        is_navigation(&method, &h)
    }

    #[test]
    fn only_a_top_level_html_get_is_a_navigation() {
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(nav(Method::GET, browser, None));
        assert!(nav(Method::GET, browser, Some("navigate")));
        assert!(nav(Method::HEAD, "TEXT/HTML", None));
        assert!(!nav(Method::GET, browser, Some("cors")), "a script's fetch");
        assert!(!nav(Method::GET, browser, Some("no-cors")));
        assert!(!nav(Method::GET, "application/json", None));
        assert!(!nav(Method::GET, "*/*", None));
        assert!(!nav(Method::POST, browser, Some("navigate")));
        assert!(!is_navigation(&Method::GET, &HeaderMap::new()));
    }

    #[test]
    fn the_return_path_is_a_path_of_this_origin_or_slash() {
        let back = |target: &str| {
            let uri = target.parse::<Uri>().unwrap();
            return_path(uri.path(), uri.query())
        };
        assert_eq!(back("/orders/7?tab=items"), "/orders/7?tab=items");
        assert_eq!(
            back("https://evil.example/x?y=1"),
            "/x?y=1",
            "absolute form: its path only"
        );
        assert_eq!(
            back("/%2F%2Fevil.example"),
            "/%2F%2Fevil.example",
            "a path here"
        );
        assert_eq!(return_path("//evil.example/x", None), "/");
        assert_eq!(return_path("/x", Some("a=\\evil")), "/");
        for bad in ["//evil", "/\\evil", "/a\\b", "evil", "", "/\t/evil", "/ x"] {
            assert!(!is_local_path(bad), "{bad:?}");
        }
        assert!(!is_local_path(&format!("/{}", "a".repeat(MAX_RETURN_LEN))));
    }

    #[test]
    fn the_authorization_request_carries_pkce_state_and_resource() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let scopes = ["read:items".to_owned(), "write:items".to_owned()];
        let url = Authorize {
            endpoint: "https://auth.example/oauth2/authorize",
            client_id: "shop.portal",
            redirect_uri: "https://app.example/.scopegate/callback",
            scopes: &scopes,
            audience: "https://orders.example",
            state: "st",
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        }
        .url();
        assert_eq!(
            url,
            "https://auth.example/oauth2/authorize?response_type=code&client_id=shop.portal\
             &redirect_uri=https%3A%2F%2Fapp.example%2F.scopegate%2Fcallback\
             &scope=read%3Aitems%20write%3Aitems&resource=https%3A%2F%2Forders.example&state=st\
             &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
        );
        let a = random_value().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_value().unwrap());
    }

    #[test]
    fn a_callback_parameter_given_twice_is_refused() {
        let c = Callback::parse(Some("code=a%2Bb&state=s+t&iss=https%3A%2F%2Fi&x=1&x=2")).unwrap();
        assert_eq!(c.code.as_deref(), Some("a+b"));
        assert_eq!(c.state.as_deref(), Some("s t"));
        assert_eq!(c.iss.as_deref(), Some("https://i"));
        assert_eq!(c.error, None);
        assert_eq!(
            Callback::parse(Some("state=a&state=b")).unwrap_err(),
            QueryError::Repeated
        );
        assert_eq!(
            Callback::parse(Some("code=%zz")).unwrap_err(),
            QueryError::Encoding
        );
        assert_eq!(Callback::parse(None).unwrap().code, None);
    }
}
