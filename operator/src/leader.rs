//! Leader election on a `coordination.k8s.io/v1` Lease: one replica writes, the others wait.
//!
//! Acquisition and renewal are compare-and-swap writes on the Lease's resourceVersion, each
//! bounded by the retry period so that an API server that stops answering cannot hold a
//! renewal hostage. Every write the leader makes goes through a [`Fence`]: it is refused once
//! the last successful renewal is older than the renew deadline (two thirds of the lease), and
//! an in-flight write is cut off at that instant, so a stale leader stops writing before
//! another replica can take the lease. A leader that cannot renew in time steps down without
//! exiting: the process keeps serving the webhook from its caches and campaigns again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Lease timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// This replica's identity (pod name, or host and pid).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and candidates retry; also the limit of one attempt.
    pub retry: Duration,
}

impl LeaseConfig {
    /// How long after a renewal was sent the holder may still write: two thirds of the lease,
    /// leaving a third for writes in flight and clock skew before anyone else may take it.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// Why leadership could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica took the lease.
    #[error("lease {0} was taken by {1}")]
    Lost(String, String),
    /// Renewal kept failing until the renew deadline passed.
    #[error("could not renew lease {0} before its renew deadline")]
    Expired(String, #[source] AttemptError),
}

/// One attempt to take or renew the lease failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The API server refused or failed the request.
    #[error("lease request failed")]
    Api(#[from] kube::Error),
    /// The API server did not answer within the retry period.
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
}

/// Outcome of one attempt to take or renew the lease.
enum Attempt {
    Held,
    HeldByOther(String),
}

/// Until when this replica may write. Extended by each successful renewal, revoked when
/// leadership ends; checked by [`FenceLayer`] on every write.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<RwLock<Option<Instant>>>);

impl Fence {
    /// Allows writes until `until`.
    pub fn extend(&self, until: Instant) {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        *slot = Some(slot.map_or(until, |current| current.max(until)));
    }

    /// Refuses every write from now on.
    pub fn revoke(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The end of the write window, if it is still open.
    pub fn open_until(&self) -> Option<Instant> {
        let until = (*self.0.read().unwrap_or_else(|p| p.into_inner()))?;
        (Instant::now() < until).then_some(until)
    }
}

/// A write was refused or cut off because this replica does not hold a valid lease.
#[derive(Debug, thiserror::Error)]
#[error("not the leader: the lease is not held or its renew deadline passed")]
pub struct NotLeader;

/// A test hook: the process aborts, as if killed, right after the `after`-th successful write
/// into `namespace`. Used to check that a crash between any two writes converges safely.
#[derive(Debug)]
pub struct CrashAfterWrites {
    namespace: String,
    after: u64,
    seen: AtomicU64,
}

impl CrashAfterWrites {
    /// Parses `<namespace>:<n>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, after) = text.rsplit_once(':')?;
        Some(Self {
            namespace: namespace.to_owned(),
            after: after.parse().ok().filter(|n| *n > 0)?,
            seen: AtomicU64::new(0),
        })
    }

    fn wrote(&self, path: &str) {
        if path.contains(&format!("/namespaces/{}/", self.namespace))
            && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.after
        {
            eprintln!(
                "fault hook: aborting after write {} into namespace {}: {path}",
                self.after, self.namespace
            );
            std::process::abort();
        }
    }
}

/// Wraps the leader's API client: reads pass; writes need an open [`Fence`] and are cut off
/// when it closes.
#[derive(Clone)]
pub struct FenceLayer {
    fence: Fence,
    metrics: Arc<Metrics>,
    crash: Option<Arc<CrashAfterWrites>>,
}

impl FenceLayer {
    /// A layer checking `fence`, counting refusals in `metrics`.
    pub fn new(fence: Fence, metrics: Arc<Metrics>, crash: Option<CrashAfterWrites>) -> Self {
        Self {
            fence,
            metrics,
            crash: crash.map(Arc::new),
        }
    }
}

impl<S> tower_layer::Layer<S> for FenceLayer {
    type Service = Fenced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fenced {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`FenceLayer`] makes.
#[derive(Clone)]
pub struct Fenced<S> {
    inner: S,
    layer: FenceLayer,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, R> tower_service::Service<http::Request<B>> for Fenced<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let read = matches!(
            *request.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        if read {
            let response = self.inner.call(request);
            return Box::pin(async move { response.await.map_err(Into::into) });
        }
        let Some(until) = self.layer.fence.open_until() else {
            self.layer.metrics.fenced_writes.inc();
            return Box::pin(async { Err(NotLeader.into()) });
        };
        let path = request.uri().path().to_owned();
        let response = self.inner.call(request);
        let (metrics, crash) = (self.layer.metrics.clone(), self.layer.crash.clone());
        Box::pin(async move {
            match tokio::time::timeout_at(until, response).await {
                Ok(Ok(response)) => {
                    if let Some(crash) = crash
                        && response.status().is_success()
                    {
                        crash.wrote(&path);
                    }
                    Ok(response)
                }
                Ok(Err(err)) => Err(err.into()),
                Err(_) => {
                    metrics.fenced_writes.inc();
                    Err(NotLeader.into())
                }
            }
        })
    }
}

/// A candidate for leadership.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    /// A candidate using `client` (not the fenced one: renewing is what opens the fence).
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Waits until this replica holds the lease, opening `fence`.
    pub async fn acquire(&self, fence: &Fence) {
        let mut logged = false;
        loop {
            let sent = Instant::now();
            match self.attempt().await {
                Ok(Attempt::Held) => {
                    fence.extend(sent + self.config.renew_deadline());
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "acquired leadership");
                    return;
                }
                Ok(Attempt::HeldByOther(holder)) if !logged => {
                    tracing::info!(lease = %self.config.name, %holder, "another replica leads; standing by");
                    logged = true;
                }
                Ok(Attempt::HeldByOther(_)) => {}
                Err(err) => tracing::debug!(error = %err, "lease attempt failed; retrying"),
            }
            tokio::time::sleep_until(sent + self.config.retry).await;
        }
    }

    /// Renews the lease, keeping `fence` open, until it is lost; then closes the fence and
    /// returns why.
    pub async fn hold(&self, fence: &Fence) -> LeaseError {
        let mut next = Instant::now() + self.config.retry;
        loop {
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            next = sent + self.config.retry;
            match self.attempt().await {
                Ok(Attempt::Held) => fence.extend(sent + self.config.renew_deadline()),
                Ok(Attempt::HeldByOther(holder)) => {
                    fence.revoke();
                    return LeaseError::Lost(self.config.name.clone(), holder);
                }
                Err(err) => {
                    let Some(until) = fence.open_until() else {
                        fence.revoke();
                        return LeaseError::Expired(self.config.name.clone(), err);
                    };
                    tracing::warn!(error = %err, "renewing the lease failed; retrying");
                    // Step down at the deadline even if the next attempt hangs.
                    next = next.min(until);
                }
            }
        }
    }

    async fn attempt(&self) -> Result<Attempt, AttemptError> {
        tokio::time::timeout(self.config.retry, self.try_hold())
            .await
            .map_err(|_| AttemptError::Timeout(self.config.retry))?
            .map_err(AttemptError::from)
    }

    async fn try_hold(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let params = PostParams {
            field_manager: Some(crate::context::FIELD_MANAGER.into()),
            ..Default::default()
        };
        let duration_secs = i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&params, &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    Ok(Attempt::HeldByOther(String::new()))
                }
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.config.identity;
        let renewed = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let valid_for = spec.lease_duration_seconds.unwrap_or(duration_secs);
        let expired = renewed.as_second() + i64::from(valid_for) < now.as_second();
        if !mine && !expired && !holder.is_empty() {
            return Ok(Attempt::HeldByOther(holder));
        }
        if !mine {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration_secs);
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(&self.config.name, &params, &lease).await {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::HeldByOther(holder)),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    /// Answers every request with 200 after `delay`, counting the requests that reached it.
    #[derive(Clone)]
    struct Api {
        delay: Duration,
        reached: Arc<AtomicUsize>,
    }

    impl tower_service::Service<http::Request<()>> for Api {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<http::Response<()>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let (delay, reached) = (self.delay, self.reached.clone());
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                reached.fetch_add(1, Ordering::SeqCst);
                Ok(http::Response::new(()))
            })
        }
    }

    fn request(method: http::Method) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri("/api/v1/namespaces/a/configmaps/b")
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn writes_pass_only_while_the_fence_is_open_and_are_cut_off_when_it_closes() {
        let fence = Fence::default();
        let metrics = Arc::new(Metrics::default());
        let reached = Arc::new(AtomicUsize::new(0));
        let mut service = FenceLayer::new(fence.clone(), metrics.clone(), None).layer(Api {
            delay: Duration::from_secs(2),
            reached: reached.clone(),
        });

        // No lease: reads pass, writes never leave.
        assert!(service.call(request(http::Method::GET)).await.is_ok());
        let refused = service.call(request(http::Method::PATCH)).await;
        assert!(refused.unwrap_err().is::<NotLeader>());
        assert_eq!(reached.load(Ordering::SeqCst), 1);

        // Leading for 5 s: a 2 s write lands.
        fence.extend(Instant::now() + Duration::from_secs(5));
        assert!(service.call(request(http::Method::PUT)).await.is_ok());
        assert_eq!(reached.load(Ordering::SeqCst), 2);

        // 1 s of the window left: a 2 s write is cut off when it closes, not answered late.
        tokio::time::advance(Duration::from_secs(2)).await;
        let started = Instant::now();
        let cut = service.call(request(http::Method::POST)).await;
        assert!(cut.unwrap_err().is::<NotLeader>());
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(reached.load(Ordering::SeqCst), 2);

        // Revoked: refused at once.
        fence.extend(Instant::now() + Duration::from_secs(60));
        fence.revoke();
        assert!(service.call(request(http::Method::DELETE)).await.is_err());
        assert!(
            metrics
                .render()
                .contains("scopegate_operator_fenced_writes_total 3")
        );
    }

    #[test]
    fn the_crash_hook_parses_its_spec() {
        let hook = CrashAfterWrites::parse("e2e-crash-1:7").unwrap();
        assert_eq!((hook.namespace.as_str(), hook.after), ("e2e-crash-1", 7));
        assert!(CrashAfterWrites::parse("ns:0").is_none());
        assert!(CrashAfterWrites::parse("ns").is_none());
        // Writes elsewhere do not count.
        hook.wrote("/api/v1/namespaces/other/configmaps/x");
        assert_eq!(hook.seen.load(Ordering::SeqCst), 0);
    }
}
