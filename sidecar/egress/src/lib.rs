//! scopegate-egress: the sidecar's egress proxy. The app sends its outbound calls to
//! `127.0.0.1:<port>` (as `HTTP_PROXY`, or as the base URL with the target's host in the
//! Host header); a call to a declared target goes on to it with an access token the sidecar
//! obtained itself (client_credentials, with the pod's projected ServiceAccount token as the
//! client assertion), so the app holds no secret and carries no OAuth code. A call to any
//! other host is refused: this is no open proxy.
//!
//! A call is routed ([`route`], [`settings::Compiled::route`]), given its target's token
//! ([`token`], from the issuer through [`issuer`]; for a target on behalf of the caller, the
//! caller's token the app forwarded, exchanged: [`exchange`]), and forwarded ([`forward`]);
//! whatever
//! fails becomes the app's answer in one place ([`answer`]). The section is compiled
//! ([`settings`]) at start and on each reload the sidecar hands over, and swapped in whole;
//! [`server`] serves the loopback port.

pub mod answer;
pub mod exchange;
pub mod forward;
pub mod issuer;
pub mod metrics;
pub mod route;
pub mod server;
pub mod settings;
pub mod token;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderValue, Request, Response};
use scopegate_core::config::SidecarConfig;
use scopegate_sidecar_kit::body::ProxyBody;
use scopegate_sidecar_kit::exposition::MetricsCollector;
use scopegate_sidecar_kit::unix_now;

use crate::answer::{Failure, answer};
use crate::issuer::{Grant, TokenFailure};
use crate::metrics::{EgressMetrics, Outcome, TargetCounters};
use crate::route::Unroutable;
use crate::settings::{Compiled, SetupError, Target, Tokens};

/// The egress proxy's live state: the section in force (swapped whole on reload, so a reload
/// never blocks a call) and its counters.
pub struct Egress {
    in_force: ArcSwapOption<Compiled>,
    metrics: Arc<EgressMetrics>,
    /// Unix second of the last log line about a refused call.
    refusal_logged_at: AtomicI64,
    /// Unix second of the last log line about a failed token exchange.
    exchange_logged_at: AtomicI64,
}

impl Egress {
    /// The egress proxy of `config`; `None` when it has no egress section.
    pub fn new(config: &SidecarConfig) -> Result<Option<Arc<Egress>>, SetupError> {
        let metrics = Arc::new(EgressMetrics::default());
        let Some(compiled) = Compiled::new(config, None, &metrics)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Egress {
            in_force: ArcSwapOption::from_pointee(compiled),
            metrics,
            refusal_logged_at: AtomicI64::new(0),
            exchange_logged_at: AtomicI64::new(0),
        })))
    }

    /// Puts the egress section of a config that went in force in force: target and token
    /// endpoint changes apply to the next call; tokens of an unchanged audience and scope set
    /// (from the same issuer and client) are kept. Without a section, every call is refused.
    /// The port is the one bound at start: another port in the config needs a restart.
    pub fn put_in_force(&self, config: &SidecarConfig) {
        let previous = self.in_force.load_full();
        let unchanged = match &previous {
            Some(compiled) => compiled.compiled_from(config),
            None => config.egress.is_none(),
        };
        if unchanged {
            return;
        }
        match Compiled::new(config, previous.as_deref(), &self.metrics) {
            Ok(Some(compiled)) => {
                tracing::info!(
                    targets = compiled.targets().len(),
                    "egress: targets in force"
                );
                self.in_force.store(Some(Arc::new(compiled)));
            }
            Ok(None) => {
                tracing::warn!(
                    "egress: the config declares no egress; every call is refused until a restart closes the port"
                );
                self.in_force.store(None);
            }
            Err(err) => tracing::error!(
                error = %scopegate_core::error_chain(&err),
                "egress: section refused; the last good one stays in force"
            ),
        }
    }

    /// The section in force, if any.
    pub fn in_force(&self) -> Option<Arc<Compiled>> {
        self.in_force.load_full()
    }

    /// Answers one call of the app: forwarded to its target with a token, or refused.
    pub async fn handle(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let compiled = self.in_force.load_full();
        let routed = match &compiled {
            Some(compiled) => compiled.route(&req).map(|target| (&**compiled, target)),
            None => Err(nothing_declared(&req)),
        };
        let (compiled, target) = match routed {
            Ok(routed) => routed,
            Err(unroutable) => {
                self.log_refusal(&unroutable);
                return fail(self.metrics.untargeted(), &Failure::Unroutable(unroutable));
            }
        };
        let authorization = match self.token(compiled, target, req.headers()).await {
            Ok(header) => header,
            Err(failure) => return fail(&target.counters, &failure),
        };
        match forward::forward(compiled, target, req, authorization).await {
            Ok(response) => {
                target.counters.count(Outcome::Forwarded);
                response
            }
            Err(error) => fail(
                &target.counters,
                &Failure::Upstream {
                    target: &target.name,
                    error,
                },
            ),
        }
    }

    /// The `Authorization` value for a call to `target` whose headers are `headers`: the pod's
    /// own token, or the caller's (in `headers`) exchanged. A cache hit returns at once; a
    /// miss waits for the one request to the issuer.
    async fn token<'t>(
        &self,
        compiled: &Compiled,
        target: &'t Target,
        headers: &HeaderMap,
    ) -> Result<HeaderValue, Failure<'t>> {
        let name = &target.name;
        let key = match &target.tokens {
            Tokens::Own(slot) => {
                return slot
                    .obtain(
                        &compiled.endpoint,
                        Grant::Own,
                        &self.metrics,
                        name,
                        &target.counters,
                    )
                    .await
                    .map_err(|failure| Failure::Token {
                        target: name,
                        failure,
                    });
            }
            Tokens::OnBehalfOfCaller(key) => key,
        };
        let subject = exchange::caller_token(headers).map_err(|problem| Failure::CallerToken {
            target: name,
            problem,
        })?;
        let slot = compiled.exchanges.slot(key, subject);
        if let Some(header) = slot.fresh(Instant::now()) {
            target.counters.exchange_cache_hit();
            return Ok(header);
        }
        let grant = Grant::Exchange { subject };
        let obtained = slot
            .obtain(
                &compiled.endpoint,
                grant,
                &self.metrics,
                name,
                &target.counters,
            )
            .await;
        obtained.map_err(|failure| {
            self.log_exchange_failure(name, &failure);
            match failure {
                TokenFailure::Refused { error } if exchange::is_callers_error(&error) => {
                    Failure::CallerTokenRefused {
                        target: name,
                        issuer_error: error,
                    }
                }
                failure => Failure::Token {
                    target: name,
                    failure,
                },
            }
        })
    }

    /// Logs a failed exchange, at most once a second: the caller's token refused at info
    /// (callers' tokens expire; that is no fault of the pod's), anything else at warn.
    fn log_exchange_failure(&self, target: &str, failure: &TokenFailure) {
        if !once_a_second(&self.exchange_logged_at) {
            return;
        }
        let issuer_error = match failure {
            TokenFailure::Refused { error } => error.as_str(),
            _ => "",
        };
        if exchange::refuses_the_caller(failure) {
            tracing::info!(
                target_name = target,
                issuer_error,
                "egress: the issuer refused to exchange a caller's token"
            );
        } else {
            tracing::warn!(
                target_name = target,
                reason = failure.reason(),
                issuer_error,
                "egress: no token exchange for the target"
            );
        }
    }

    /// The counters, for a `/metrics` scrape.
    pub fn collector(&self) -> Box<dyn MetricsCollector> {
        self.metrics.collector()
    }

    /// The `/readyz` lines: the targets in force and those whose tokens fail (never a
    /// readiness condition: other targets, and the pod's inbound traffic, still work).
    pub fn readiness(&self, detail: &mut String) {
        let Some(compiled) = self.in_force.load_full() else {
            let _ = writeln!(
                detail,
                "egress: no egress in the config; every call is refused"
            );
            return;
        };
        let _ = writeln!(detail, "egress: {} targets", compiled.targets().len());
        for target in compiled.targets() {
            if let Some(failure) = target.own_slot().and_then(|slot| slot.failing()) {
                let _ = writeln!(
                    detail,
                    "egress: target {}: no token ({}); its calls fail until one is granted",
                    target.name,
                    failure.reason()
                );
            }
        }
    }

    /// Logs a refused call, at most once a second: a misbehaving app cannot flood the log.
    fn log_refusal(&self, unroutable: &Unroutable) {
        if !once_a_second(&self.refusal_logged_at) {
            return;
        }
        match unroutable {
            Unroutable::Undeclared(host) => {
                tracing::info!(%host, "egress: refused a call to a host that is no declared target");
            }
            Unroutable::Connect => tracing::info!("egress: refused a CONNECT"),
            Unroutable::Malformed(why) => tracing::info!(reason = why, "egress: refused a call"),
        }
    }
}

/// Why a call is refused while no section is in force: what any call would get with no
/// target declared.
fn nothing_declared(req: &Request<ProxyBody>) -> Unroutable {
    match route::requested(req.method(), req.uri(), req.headers()) {
        Ok(named) => Unroutable::Undeclared(named.to_string()),
        Err(unroutable) => unroutable,
    }
}

/// Whether a log line limited to one a second by `logged_at` (the Unix second of the last)
/// may be written now; if so, it is counted as written.
fn once_a_second(logged_at: &AtomicI64) -> bool {
    let now = unix_now();
    let last = logged_at.load(Ordering::Relaxed);
    now != last
        && logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Counts a failed call and answers it.
fn fail(counters: &TargetCounters, failure: &Failure<'_>) -> Response<ProxyBody> {
    counters.count(failure.outcome());
    answer(failure)
}
