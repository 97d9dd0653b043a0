//! The sessions' counters, rendered on the admin port's `/metrics` beside the verifier's.
//! Labels are fixed event names: never a subject, path or key id.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use scopegate_sidecar_kit::exposition::{self, Encoder, MetricsCollector};

/// What happened to sessions (the `event` label of `scopegate_sidecar_sessions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A browser was sent to log in.
    LoginRedirect,
    /// A callback set a session.
    LoginCompleted,
    /// A callback was refused (no or another login cookie, `state`, `iss`, an `error`, the
    /// code refused).
    LoginFailed,
    /// A session's access token was refreshed.
    Refreshed,
    /// The issuer refused a refresh: the session ended.
    RefreshRefused,
    /// A refresh failed for want of an answer: the session goes on while its token lasts.
    RefreshUnavailable,
    /// A session ended (its lifetime, its token refused, a refused refresh).
    Ended,
    /// A state-changing request with the cookie came from another origin.
    CrossSiteRefused,
    /// A logout.
    Logout,
    /// The app's answer tried to set one of the sidecar's cookies (removed).
    AppCookieRemoved,
    /// A logout revoked its refresh token at the issuer.
    Revoked,
}

/// Every event, in exposition order.
const EVENTS: [(Event, &str); 11] = [
    (Event::LoginRedirect, "login_redirect"),
    (Event::LoginCompleted, "login_completed"),
    (Event::LoginFailed, "login_failed"),
    (Event::Refreshed, "refreshed"),
    (Event::RefreshRefused, "refresh_refused"),
    (Event::RefreshUnavailable, "refresh_unavailable"),
    (Event::Ended, "ended"),
    (Event::CrossSiteRefused, "cross_site_refused"),
    (Event::Logout, "logout"),
    (Event::AppCookieRemoved, "app_cookie_removed"),
    (Event::Revoked, "revoked"),
];

/// The sessions' counters and gauges.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    events: [AtomicU64; EVENTS.len()],
    /// Session keys that open cookies now.
    pub keys: AtomicI64,
    /// 1 while the newest key file is refused (the last good keys serve).
    pub keys_failing: AtomicI64,
    key_reloads_ok: AtomicU64,
    key_reloads_failed: AtomicU64,
    /// Refreshes held in the single-flight map.
    pub refreshes_held: AtomicI64,
}

impl SessionMetrics {
    /// Counts one event.
    pub fn count(&self, event: Event) {
        if let Some(i) = EVENTS.iter().position(|(e, _)| *e == event) {
            self.events[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many of `event` were counted.
    pub fn events(&self, event: Event) -> u64 {
        EVENTS
            .iter()
            .position(|(e, _)| *e == event)
            .map_or(0, |i| self.events[i].load(Ordering::Relaxed))
    }

    /// Counts a key-file load.
    pub fn key_reload(&self, ok: bool) {
        let counter = if ok {
            &self.key_reloads_ok
        } else {
            &self.key_reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.keys_failing.store(i64::from(!ok), Ordering::Relaxed);
    }
}

/// The collector of one scrape.
#[derive(Debug)]
pub struct Scrape(pub Arc<SessionMetrics>);

impl MetricsCollector for Scrape {
    fn encode(&self, mut encoder: Encoder<'_>) -> fmt::Result {
        let m = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let series: Vec<([(&str, &str); 1], u64)> = EVENTS
            .iter()
            .zip(&m.events)
            .map(|((_, name), n)| ([("event", *name)], load(n)))
            .collect();
        exposition::counters(
            &mut encoder,
            "scopegate_sidecar_sessions",
            "Browser-session events: logins, refreshes, ends, cross-site refusals, logouts.",
            series.iter().map(|(labels, n)| (&labels[..], *n)),
        )?;
        exposition::gauge(
            &mut encoder,
            "scopegate_sidecar_session_keys",
            "Session keys that open cookies now (0: sessions are off).",
            m.keys.load(Ordering::Relaxed),
        )?;
        exposition::gauge(
            &mut encoder,
            "scopegate_sidecar_session_keys_failing",
            "1 while the newest session-keys file is refused and the last good keys serve.",
            m.keys_failing.load(Ordering::Relaxed),
        )?;
        exposition::counters(
            &mut encoder,
            "scopegate_sidecar_session_key_reloads",
            "Loads of the session-keys file, by result.",
            [
                (&[("result", "ok")][..], load(&m.key_reloads_ok)),
                (&[("result", "failed")][..], load(&m.key_reloads_failed)),
            ],
        )?;
        exposition::gauge(
            &mut encoder,
            "scopegate_sidecar_session_refreshes_held",
            "Refreshes in flight or remembered in the single-flight map (bounded).",
            m.refreshes_held.load(Ordering::Relaxed),
        )
    }
}
