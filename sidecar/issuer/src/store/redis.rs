//! The Redis store, shared by issuer replicas. Every multi-step update is one Lua script, so
//! it is atomic on the server: compare-and-swap of records (single-use codes, refresh
//! rotation), appending to the revocation log with its lookup indexes, and GCRA rate budgets
//! read against the server's clock. Every key carries an expiry except the log's epoch and
//! sequence counter. Keys share one hash tag, so a cluster keeps them in one slot.
//!
//! Durability is the server's: with `appendonly yes` and `appendfsync always`, everything the
//! issuer answered for survives a restart of Redis.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use serde::{Deserialize, Serialize};

use super::{
    Budget, FeedHead, FeedSlice, PendingBounds, RateOp, RateStore, Revocation, Store, StoreError,
    StoreFuture,
};

/// Why the Redis store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The address does not make a Redis connection.
    #[error("store.address {0:?} is not host:port")]
    Address(String),
    /// The credentials directory has no readable `password` file.
    #[error("cannot read the Redis password from {0}")]
    Credentials(String),
    /// The client refused the settings.
    #[error("Redis client setup failed")]
    Client(#[source] redis::RedisError),
}

/// Where and how to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTarget {
    /// host:port.
    pub address: String,
    /// Use TLS.
    pub tls: bool,
    /// PEM roots for TLS (the system roots are used as well).
    pub ca_bundle_pem: Option<String>,
    /// Directory holding `username` (optional) and `password`.
    pub credentials_dir: Option<String>,
}

/// The Redis-backed store.
pub struct RedisStore {
    target: RedisTarget,
    prefix: String,
    connection: ArcSwap<ConnectionManager>,
    credentials: std::sync::Mutex<[u8; 32]>,
    scripts: Scripts,
}

struct Scripts {
    swap: Script,
    revoke: Script,
    head: Script,
    since: Script,
    rate: Script,
    pending: Script,
}

const SWAP: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[4], 'PXAT', ARGV[5])
else
  redis.call('DEL', KEYS[1])
end
return 1
";

// KEYS: seq, log, keep, epoch. ARGV: prefix, epoch candidate, then per entry: kind, id,
// before, keep (Unix seconds), JSON.
const REVOKE: &str = r"
if not redis.call('GET', KEYS[4]) then redis.call('SET', KEYS[4], ARGV[2]) end
local prefix = ARGV[1]
local n = (#ARGV - 2) / 5
for i = 0, n - 1 do
  local b = 3 + i * 5
  local kind, id, before, keep, json = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local seq = redis.call('INCR', KEYS[1])
  local member = seq .. ' ' .. json
  redis.call('ZADD', KEYS[2], seq, member)
  redis.call('ZADD', KEYS[3], keep, member)
  if kind == 'j' then
    redis.call('SET', prefix .. 'jti:' .. id, '1', 'EXAT', keep)
  else
    local k = prefix .. 'sub:' .. id
    local cur = tonumber(redis.call('GET', k) or before)
    local until_at = redis.call('EXPIRETIME', k)
    redis.call('SET', k, math.max(cur, tonumber(before)), 'EXAT', math.max(until_at, tonumber(keep)))
  end
end
local now = redis.call('TIME')[1]
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[2], m)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
return {redis.call('GET', KEYS[4]), redis.call('GET', KEYS[1]) or '0'}
";

// KEYS: epoch, seq. ARGV: epoch candidate.
const HEAD: &str = r"
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[1])
  e = ARGV[1]
end
return {e, redis.call('GET', KEYS[2]) or '0'}
";

// KEYS: epoch, seq, log. ARGV: epoch candidate, first sequence number wanted.
const SINCE: &str = r"
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[1])
  e = ARGV[1]
end
return {e, redis.call('GET', KEYS[2]) or '0', redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], '+inf')}
";

// KEYS: budgets. ARGV: op (c, a, s), then per key: emission ms, period ms.
const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local worst = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local emission = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local nxt = tat + emission
  if nxt - now <= period then
    tats[i] = nxt
  else
    local wait = math.ceil((nxt - now - period) / 1000)
    if wait < 1 then wait = 1 end
    if wait > worst then worst = wait end
    tats[i] = false
  end
end
if op == 'c' or (op == 'a' and worst > 0) then return worst end
for i, key in ipairs(KEYS) do
  if tats[i] then redis.call('SET', key, tats[i], 'PXAT', tats[i]) end
end
return worst
";

// KEYS: the address's pending list, the list of all. ARGV: record key, per-address bound, total
// bound, expiry of the lists (Unix ms). Lists hold record keys, oldest first; an evicted key is
// deleted (a settled one is gone already and not counted).
const PENDING: &str = r"
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
local evicted = 0
local per_address, total = tonumber(ARGV[2]), tonumber(ARGV[3])
while redis.call('LLEN', KEYS[1]) > per_address do
  evicted = evicted + redis.call('DEL', redis.call('LPOP', KEYS[1]))
end
while redis.call('LLEN', KEYS[2]) > total do
  evicted = evicted + redis.call('DEL', redis.call('LPOP', KEYS[2]))
end
return evicted
";

/// A log entry as stored: the entry and when it may go.
#[derive(Serialize, Deserialize)]
struct Stored {
    keep: i64,
    entry: Revocation,
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(Box::new(err))
}

impl RedisStore {
    /// A store for the issuer `issuer`, connecting lazily (a Redis that is down at start is
    /// retried on use; the issuer answers `temporarily_unavailable` meanwhile).
    pub fn new(issuer: &str, target: RedisTarget) -> Result<RedisStore, RedisSetupError> {
        let (manager, fingerprint) = connect(&target)?;
        let hash = digest::digest(&digest::SHA256, issuer.as_bytes());
        let tag: String = hash.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(RedisStore {
            target,
            prefix: format!("scopegate:{{{tag}}}:"),
            connection: ArcSwap::from_pointee(manager),
            credentials: std::sync::Mutex::new(fingerprint),
            scripts: Scripts {
                swap: Script::new(SWAP),
                revoke: Script::new(REVOKE),
                head: Script::new(HEAD),
                since: Script::new(SINCE),
                rate: Script::new(RATE),
                pending: Script::new(PENDING),
            },
        })
    }

    /// Re-reads the mounted credentials; when they changed, later commands use a new
    /// connection with them. Returns whether they changed.
    pub fn refresh_credentials(&self) -> Result<bool, RedisSetupError> {
        let print = credentials_fingerprint(&self.target)?;
        let mut seen = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == print {
            return Ok(false);
        }
        let (manager, print) = connect(&self.target)?;
        self.connection.store(Arc::new(manager));
        *seen = print;
        Ok(true)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        ConnectionManager::clone(&self.connection.load())
    }
}

fn read_credentials(
    target: &RedisTarget,
) -> Result<(Option<String>, Option<String>), RedisSetupError> {
    let Some(dir) = &target.credentials_dir else {
        return Ok((None, None));
    };
    let read = |name: &str| std::fs::read_to_string(std::path::Path::new(dir).join(name)).ok();
    let password = read("password").ok_or_else(|| RedisSetupError::Credentials(dir.clone()))?;
    let username = read("username").map(|u| u.trim_end_matches(['\r', '\n']).to_owned());
    Ok((
        username.filter(|u| !u.is_empty()),
        Some(password.trim_end_matches(['\r', '\n']).to_owned()),
    ))
}

fn credentials_fingerprint(target: &RedisTarget) -> Result<[u8; 32], RedisSetupError> {
    let (user, password) = read_credentials(target)?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(user.unwrap_or_default().as_bytes());
    ctx.update(&[0]);
    ctx.update(password.unwrap_or_default().as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

fn connect(target: &RedisTarget) -> Result<(ConnectionManager, [u8; 32]), RedisSetupError> {
    let (host, port) = target
        .address
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().ok()?,
            ))
        })
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| RedisSetupError::Address(target.address.clone()))?;
    let addr = if target.tls {
        redis::ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(host.to_owned(), port)
    };
    let mut info = addr
        .into_connection_info()
        .map_err(RedisSetupError::Client)?;
    let (user, password) = read_credentials(target)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &user {
        settings = settings.set_username(user);
    }
    if let Some(password) = &password {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    let client = if target.tls {
        // The client builds its rustls config from the process-wide provider.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: target.ca_bundle_pem.as_ref().map(|p| p.as_bytes().to_vec()),
            },
        )
    } else {
        redis::Client::open(info)
    }
    .map_err(RedisSetupError::Client)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let manager =
        ConnectionManager::new_lazy_with_config(client, config).map_err(RedisSetupError::Client)?;
    Ok((manager, credentials_fingerprint(target)?))
}

fn head_of(epoch: String, seq: String) -> Result<FeedHead, StoreError> {
    Ok(FeedHead {
        epoch,
        seq: seq.parse().map_err(|_| StoreError::Corrupt)?,
    })
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut conn = self.conn();
            redis::cmd("GET")
                .arg(self.key(key))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)
        })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
        expires_at_ms: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn();
            let swapped: i64 = self
                .scripts
                .swap
                .key(self.key(key))
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(if new.is_some() { "1" } else { "0" })
                .arg(new.unwrap_or_default())
                .arg(expires_at_ms.max(1))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(swapped == 1)
        })
    }

    fn revoke(&self, entries: Vec<Revocation>, keep_secs: i64) -> StoreFuture<'_, FeedHead> {
        Box::pin(async move {
            let mut conn = self.conn();
            let mut invocation = self.scripts.revoke.prepare_invoke();
            invocation
                .key(self.key("feed:seq"))
                .key(self.key("feed:log"))
                .key(self.key("feed:keep"))
                .key(self.key("feed:epoch"))
                .arg(&self.prefix)
                .arg(super::new_epoch());
            for entry in entries {
                let keep = entry.until().saturating_add(keep_secs);
                let (kind, id, before) = match &entry {
                    Revocation::Jti { jti, .. } => ("j", jti.clone(), 0),
                    Revocation::Subject { sub, before, .. } => ("s", sub.clone(), *before),
                };
                let json = serde_json::to_string(&Stored { keep, entry })
                    .map_err(|_| StoreError::Corrupt)?;
                invocation.arg(kind).arg(id).arg(before).arg(keep).arg(json);
            }
            let (epoch, seq): (String, String) = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            head_of(epoch, seq)
        })
    }

    fn jti_revoked<'a>(&'a self, jti: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn();
            let found: Option<String> = redis::cmd("GET")
                .arg(self.key(&format!("jti:{jti}")))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(found.is_some())
        })
    }

    fn subject_cutoff<'a>(&'a self, sub: &'a str) -> StoreFuture<'a, Option<i64>> {
        Box::pin(async move {
            let mut conn = self.conn();
            let found: Option<String> = redis::cmd("GET")
                .arg(self.key(&format!("sub:{sub}")))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            found
                .map(|v| v.parse::<i64>().map_err(|_| StoreError::Corrupt))
                .transpose()
        })
    }

    fn feed_head(&self) -> StoreFuture<'_, FeedHead> {
        Box::pin(async move {
            let mut conn = self.conn();
            let (epoch, seq): (String, String) = self
                .scripts
                .head
                .key(self.key("feed:epoch"))
                .key(self.key("feed:seq"))
                .arg(super::new_epoch())
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            head_of(epoch, seq)
        })
    }

    fn feed_since(&self, after: Option<u64>) -> StoreFuture<'_, FeedSlice> {
        Box::pin(async move {
            let mut conn = self.conn();
            let (epoch, seq, members): (String, String, Vec<String>) = self
                .scripts
                .since
                .key(self.key("feed:epoch"))
                .key(self.key("feed:seq"))
                .key(self.key("feed:log"))
                .arg(super::new_epoch())
                .arg(after.map_or(0, |a| a.saturating_add(1)))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let now = scopegate_sidecar_kit::unix_now();
            let mut entries = Vec::with_capacity(members.len());
            for member in members {
                let (seq, json) = member.split_once(' ').ok_or(StoreError::Corrupt)?;
                let seq: u64 = seq.parse().map_err(|_| StoreError::Corrupt)?;
                let stored: Stored = serde_json::from_str(json).map_err(|_| StoreError::Corrupt)?;
                if stored.keep > now {
                    entries.push((seq, stored.entry));
                }
            }
            Ok(FeedSlice {
                head: head_of(epoch, seq)?,
                entries,
            })
        })
    }

    fn track_pending<'a>(
        &'a self,
        address: &'a str,
        key: &'a str,
        expires_at_ms: u64,
        bounds: PendingBounds,
    ) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            let mut conn = self.conn();
            let evicted: u64 = self
                .scripts
                .pending
                .key(self.key(&format!("pending:a:{address}")))
                .key(self.key("pending:all"))
                .arg(self.key(key))
                .arg(bounds.per_address)
                .arg(bounds.total)
                .arg(expires_at_ms.max(1))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(usize::try_from(evicted).unwrap_or(usize::MAX))
        })
    }
}

impl RateStore for RedisStore {
    fn rate<'a>(
        &'a self,
        op: RateOp,
        keys: &'a [(String, Budget)],
    ) -> StoreFuture<'a, Result<(), u64>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Ok(()));
            }
            let mut conn = self.conn();
            let mut invocation = self.scripts.rate.prepare_invoke();
            invocation.arg(match op {
                RateOp::Check => "c",
                RateOp::Admit => "a",
                RateOp::Spend => "s",
            });
            for (key, budget) in keys {
                invocation
                    .key(self.key(&format!("rate:{key}")))
                    .arg(budget.emission_ms())
                    .arg(budget.period_ms);
            }
            let wait: u64 = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(if wait == 0 { Ok(()) } else { Err(wait) })
        })
    }
}
