//! What the two cookies hold: a session (its tokens and times) and a login in flight (its
//! `state`, PKCE verifier and return path). Both are sealed ([`crate::seal`]); their `Debug`
//! shows no token, state or verifier.

use scopegate_core::session::{LOGIN_COOKIE, SESSION_COOKIE};
use serde::{Deserialize, Serialize};

use crate::keys::Keyring;
use crate::seal;

/// How long a login may take, from the redirect to the callback (the login cookie's
/// `Max-Age`, and checked again when it comes back).
pub const LOGIN_TTL_SECS: i64 = 600;

/// Largest cookie value set: browsers keep at least 4096 bytes per cookie, name and
/// attributes included.
pub const MAX_COOKIE_VALUE: usize = 3800;

/// A session: held by the browser, sealed, never seen by its JavaScript.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Session {
    /// The access token.
    #[serde(rename = "a")]
    pub access_token: String,
    /// The refresh token, when the issuer granted one.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires (Unix seconds, from `expires_in`).
    #[serde(rename = "e")]
    pub expires_at: i64,
    /// When the access token was obtained (Unix seconds).
    #[serde(rename = "o")]
    pub obtained_at: i64,
    /// When the user logged in (Unix seconds): the session ends `max_lifetime_secs` after.
    #[serde(rename = "s")]
    pub started_at: i64,
    /// The access token's `sub` at login, for logs.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .field("obtained_at", &self.obtained_at)
            .field("started_at", &self.started_at)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Least refresh margin: an access token is refreshed once this little of its life is left.
pub const MIN_REFRESH_MARGIN_SECS: i64 = 30;

impl Session {
    /// When it ends whatever its refreshes: `max_lifetime_secs` after login.
    pub fn ends_at(&self, max_lifetime_secs: u64) -> i64 {
        self.started_at
            .saturating_add(i64::try_from(max_lifetime_secs).unwrap_or(i64::MAX))
    }

    /// Whether its access token is due for a refresh at `now`: within 30 s of its expiry, or
    /// within a tenth of its lifetime when that is longer (a 15-minute token is refreshed in
    /// its last 90 s); never in the first half of its lifetime. A token of 60 s or less is
    /// refreshed in its second half: at most once per half-lifetime per session, however many
    /// requests carry the newest cookie (a 20 s token refreshed on every request would have
    /// every page of every user call the issuer).
    pub fn refresh_due(&self, now: i64) -> bool {
        let lifetime = (self.expires_at - self.obtained_at).max(0);
        let margin = (lifetime / 10)
            .max(MIN_REFRESH_MARGIN_SECS)
            .min(lifetime / 2);
        now >= self.expires_at - margin
    }

    /// Seals it for `policy`.
    pub fn seal(&self, keys: &Keyring, now: i64, policy: &str) -> Option<String> {
        let json = serde_json::to_vec(self).ok()?;
        seal::seal(keys, now, SESSION_COOKIE, policy, &json).filter(|v| v.len() <= MAX_COOKIE_VALUE)
    }

    /// Opens a session cookie of `policy`.
    pub fn open(keys: &Keyring, now: i64, policy: &str, value: &str) -> Option<Session> {
        let json = seal::open(keys, now, SESSION_COOKIE, policy, value)?;
        serde_json::from_slice(&json).ok()
    }
}

/// A login in flight, bound to the browser that started it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Login {
    /// The `state` sent to the authorization endpoint.
    #[serde(rename = "st")]
    pub state: String,
    /// The PKCE verifier.
    #[serde(rename = "v")]
    pub verifier: String,
    /// The path and query to return to (of this origin).
    #[serde(rename = "r")]
    pub return_to: String,
    /// When the login started (Unix seconds).
    #[serde(rename = "t")]
    pub started_at: i64,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("return_to", &self.return_to)
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// Seals it for `policy`.
    pub fn seal(&self, keys: &Keyring, now: i64, policy: &str) -> Option<String> {
        let json = serde_json::to_vec(self).ok()?;
        seal::seal(keys, now, LOGIN_COOKIE, policy, &json).filter(|v| v.len() <= MAX_COOKIE_VALUE)
    }

    /// Opens a login cookie of `policy` that has not outlived [`LOGIN_TTL_SECS`].
    pub fn open(keys: &Keyring, now: i64, policy: &str, value: &str) -> Option<Login> {
        let json = seal::open(keys, now, LOGIN_COOKIE, policy, value)?;
        serde_json::from_slice::<Login>(&json)
            .ok()
            .filter(|login| now < login.started_at + LOGIN_TTL_SECS && login.started_at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::entry;
    use serde_json::json;

    fn keys() -> Keyring {
        Keyring::parse(&json!({"keys": [entry("k1", 9, 0, None)]}).to_string()).unwrap()
    }

    fn session(obtained: i64, expires: i64) -> Session {
        Session {
            access_token: "at".into(),
            refresh_token: Some("rt".into()),
            expires_at: expires,
            obtained_at: obtained,
            started_at: obtained,
            subject: Some("alice".into()),
        }
    }

    #[test]
    fn a_token_is_refreshed_in_its_last_thirty_seconds_or_tenth_never_its_first_half() {
        let s = session(1000, 1900); // 15 minutes: the last 90 s
        assert!(!s.refresh_due(1809));
        assert!(s.refresh_due(1810));
        let s = session(1000, 1120); // 2 minutes: the last 30 s
        assert!(!s.refresh_due(1089));
        assert!(s.refresh_due(1090));
        let s = session(1000, 1020); // 20 s: its second half
        assert!(!s.refresh_due(1000));
        assert!(!s.refresh_due(1009));
        assert!(s.refresh_due(1010));
        let s = session(1000, 1040); // 40 s: its last 20 s, not 30
        assert!(!s.refresh_due(1019));
        assert!(s.refresh_due(1020));
        let s = session(1000, 1001); // 1 s: once expired
        assert!(!s.refresh_due(1000));
        assert!(s.refresh_due(1001));
        assert_eq!(s.ends_at(60), 1060);
    }

    #[test]
    fn a_session_never_opens_as_a_login_nor_the_reverse() {
        let keys = keys();
        let sealed = session(5, 100).seal(&keys, 10, "shop/web").unwrap();
        assert_eq!(
            Session::open(&keys, 10, "shop/web", &sealed),
            Some(session(5, 100))
        );
        assert_eq!(Login::open(&keys, 10, "shop/web", &sealed), None);
        assert_eq!(Session::open(&keys, 10, "shop/other", &sealed), None);
        let login = Login {
            state: "s".into(),
            verifier: "v".into(),
            return_to: "/x".into(),
            started_at: 10,
        };
        let sealed = login.seal(&keys, 10, "shop/web").unwrap();
        assert_eq!(Session::open(&keys, 10, "shop/web", &sealed), None);
        assert_eq!(Login::open(&keys, 609, "shop/web", &sealed), Some(login));
        assert_eq!(
            Login::open(&keys, 610, "shop/web", &sealed),
            None,
            "expired"
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let text = format!("{:?}", session(1, 2));
        assert!(!text.contains("\"at\"") && !text.contains("rt\""), "{text}");
        let login = Login {
            state: "state-value".into(),
            verifier: "verifier-value".into(),
            return_to: "/".into(),
            started_at: 0,
        };
        let text = format!("{login:?}");
        assert!(!text.contains("state-value") && !text.contains("verifier-value"));
    }
}
