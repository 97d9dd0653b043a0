//! Publish-before-sign key rotation as a pure function of the current keys, what the verifiers
//! were observed to hold, and the clock.
//!
//! Every key carries its schedule (see [`scopegate_core::keys`]). [`plan`] moves the set one
//! step: it drops keys whose removal time passed, creates the successor of the active key at
//! least `propagation` before it must sign, honours manual rotations and emergency
//! revocations, and keeps every key published until the last token it may have signed has
//! expired. The caller supplies key material through a factory, so the schedule logic is
//! testable without crypto or an API server.
//!
//! Crash safety comes from the order of writes this plan allows. A new key is first written
//! *pending*: stored with its private half, published in the JWKS and every sidecar config, and
//! never used to sign. Only once the caller has observed it in every verifier's key set
//! (`Inputs::published`) does a later step schedule its activation, `propagation` after that
//! observation. An operator killed at any write therefore leaves either the old state or a
//! state in which every verifier knows every key the issuer may sign with.
//!
//! Manual rotations retire the superseded key early: it stops signing when its successor
//! starts and stays published for the longest token lifetime plus leeway after that, so
//! repeated rotations keep at most about `(token TTL + leeway) / propagation + 3` keys published.
//! That relies on the margin every schedule here relies on: clocks (the operator's across
//! restarts, and the issuers') do not disagree by more than `propagation`.
//!
//! Exceptions to "published for `propagation` before it signs", both unavoidable: the very
//! first key of an issuer (no verifier can hold an older set, so nothing is rejected that was
//! not rejected anyway), and the replacement of an emergency-revoked key when no other
//! published key can take over.

use std::collections::BTreeSet;

use scopegate_core::jwk::Jwk;
use scopegate_core::keys::{KeyState, ManagedKey};

/// Rotation settings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationParams {
    /// How long a key signs.
    pub period: i64,
    /// Time from writing a key to every verifier holding it.
    pub propagation: i64,
    /// Longest lifetime of a token the issuer signs.
    pub token_ttl: i64,
    /// Verifiers' clock-skew leeway.
    pub leeway: i64,
}

impl RotationParams {
    /// Time a key stays published after it stops signing.
    pub fn tail(&self) -> i64 {
        self.token_ttl + self.leeway
    }

    /// How long before the active key stops signing its successor is created.
    fn lead(&self) -> i64 {
        2 * self.propagation
    }
}

/// What the user asked for through annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// A manual rotation: the successor should sign within `propagation`.
    pub rotate: bool,
    /// Remove this key id from every key set at once.
    pub revoke_kid: Option<String>,
}

/// Key material for a new key, made by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKeyMaterial {
    /// Key id.
    pub kid: String,
    /// Base64 PKCS#8 (or raw secret for HS256).
    pub private_key: String,
    /// Public JWK (none for HS256).
    pub public_jwk: Option<scopegate_core::jwk::Jwk>,
}

/// Something the plan changed, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new key was created.
    Created {
        /// Its id.
        kid: String,
        /// When it signs (when `pending`, the earliest it may).
        activates_at: i64,
        /// It signs nothing until every verifier is seen to hold it.
        pending: bool,
    },
    /// A pending key was seen in every verifier's key set: its activation is scheduled.
    Published {
        /// Its id.
        kid: String,
        /// When it signs.
        activates_at: i64,
    },
    /// A key passed its removal time.
    Removed(String),
    /// A key was revoked by request.
    Revoked(String),
    /// A key's signing window moved.
    Rescheduled(String),
}

impl Change {
    /// The id of the key it is about.
    pub fn kid(&self) -> &str {
        match self {
            Change::Created { kid, .. } | Change::Published { kid, .. } => kid,
            Change::Removed(kid) | Change::Revoked(kid) | Change::Rescheduled(kid) => kid,
        }
    }
}

/// Everything one planning step looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The stored keys (valid ones only) plus any public key kept after its private half was
    /// lost.
    pub keys: &'a [ManagedKey],
    /// Now, in Unix seconds.
    pub now: i64,
    /// Rotation settings.
    pub params: RotationParams,
    /// The algorithm new keys use.
    pub alg: &'a str,
    /// Manual rotation and emergency revocation.
    pub requests: &'a Requests,
    /// Key ids that every verifier of the issuer was observed to hold.
    pub published: &'a BTreeSet<String>,
    /// The issuer had keys before (in status or published): a key made now must be published
    /// before it signs even when none is left in the document.
    pub had_keys: bool,
}

/// The result of one planning step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The keys to store.
    pub keys: Vec<ManagedKey>,
    /// What changed.
    pub changes: Vec<Change>,
    /// When the next transition is due (for the requeue).
    pub next_transition: Option<i64>,
    /// A manual rotation waits: the document already holds [`MAX_KEYS`] keys.
    pub rotation_deferred: bool,
}

/// Most keys one signing-keys document holds (an RSA-4096 key with its public JWK is about
/// 4 KB; a Secret holds 1 MiB, and every verifier's config carries the public keys). The
/// schedule alone stays far below (rotationPeriod >= 1h >= accessTokenTtl); back-to-back
/// manual rotations with a long token lifetime over a short propagation would not: a manual
/// rotation waits while the document is full, until the oldest retired key is removed.
pub const MAX_KEYS: usize = 16;

impl Plan {
    /// The key written but not yet seen everywhere, if any.
    pub fn pending(&self) -> Option<&ManagedKey> {
        self.keys.iter().find(|k| k.pending)
    }
}

/// Moves the keys one step. `new_key` makes key material for `inputs.alg`.
pub fn plan<E>(
    inputs: &Inputs<'_>,
    new_key: &mut dyn FnMut() -> Result<NewKeyMaterial, E>,
) -> Result<Plan, E> {
    let Inputs {
        now,
        params,
        alg,
        requests,
        published,
        had_keys,
        ..
    } = *inputs;
    let mut keys: Vec<ManagedKey> = inputs.keys.to_vec();
    let mut changes = Vec::new();
    let emergency = revoke(&mut keys, requests, now, &mut changes);
    let mut rotation_deferred = false;

    // A pending key's times are only a plan: keep them ahead of the clock while it waits.
    for key in keys.iter_mut().filter(|k| k.pending) {
        if key.activates_at < now + params.propagation {
            reschedule(key, now + params.propagation, params);
        }
    }

    // Keys past removal, and successors that never signed and no longer fit the algorithm.
    keys.retain(|k| {
        let stale_successor = k.state(now) == KeyState::Next && k.has_private_key() && k.alg != alg;
        let keep = k.state(now) != KeyState::Removed && !stale_successor;
        if !keep {
            changes.push(Change::Removed(k.kid.clone()));
        }
        keep
    });

    schedule_published(&mut keys, published, now, params, &mut changes);

    if !keys.iter().any(ManagedKey::has_private_key) {
        // Nothing left that could ever sign. Only a brand-new issuer (or the replacement of
        // an emergency-revoked key) signs at once; otherwise verifiers may hold keys that the
        // issuer still signs with from a stale copy, and the new key is published first.
        let immediate = emergency || (!had_keys && keys.is_empty());
        let activates_at = if immediate {
            now
        } else {
            now + params.propagation
        };
        create(
            inputs,
            new_key()?,
            activates_at,
            !immediate,
            &mut keys,
            &mut changes,
        );
    }

    ensure_active_key(&mut keys, now, params, emergency, &mut changes);

    // With nothing that may sign yet (a pending key waits for its publication, or the clock
    // stepped back before the first activation), wait rather than mint a duplicate.
    if let Some(active) = active_index(&keys, now) {
        rotation_deferred = successor(inputs, active, new_key, &mut keys, &mut changes)?;
        extend_while_waiting(&mut keys, active, now, params, &mut changes);
    }

    keys.sort_by_key(|k| k.activates_at);
    let next_transition = next_transition(&keys, now, params);
    Ok(Plan {
        keys,
        changes,
        next_transition,
        rotation_deferred,
    })
}

/// While the successor waits for its publication, the `active` key keeps signing, with a
/// window the issuer's mounted copy sees in time.
fn extend_while_waiting(
    keys: &mut [ManagedKey],
    active: usize,
    now: i64,
    params: RotationParams,
    changes: &mut Vec<Change>,
) {
    let waiting = keys.iter().any(|k| k.pending && k.has_private_key());
    if waiting && now + params.propagation >= keys[active].signs_until {
        let until = now + 2 * params.propagation;
        let key = &mut keys[active];
        key.signs_until = until;
        key.removed_after = key.removed_after.max(until + params.tail());
        changes.push(Change::Rescheduled(key.kid.clone()));
    }
}

/// Removes the key a revocation names; whether it was the one signing (an emergency: its
/// replacement may sign at once).
fn revoke(
    keys: &mut Vec<ManagedKey>,
    requests: &Requests,
    now: i64,
    changes: &mut Vec<Change>,
) -> bool {
    let Some(kid) = &requests.revoke_kid else {
        return false;
    };
    let Some(position) = keys.iter().position(|k| &k.kid == kid) else {
        return false;
    };
    let emergency = keys[position].state(now) == KeyState::Active;
    keys.remove(position);
    changes.push(Change::Revoked(kid.clone()));
    emergency
}

/// A pending key every verifier holds: it signs `propagation` after that observation, and
/// its predecessor until then (no later: a manual rotation retires it early).
fn schedule_published(
    keys: &mut [ManagedKey],
    published: &BTreeSet<String>,
    now: i64,
    params: RotationParams,
    changes: &mut Vec<Change>,
) {
    for i in 0..keys.len() {
        if !(keys[i].pending && published.contains(&keys[i].kid)) {
            continue;
        }
        let at = keys[i].activates_at.max(now + params.propagation);
        let key = &mut keys[i];
        key.pending = false;
        key.published_at = now;
        key.activates_at = at;
        key.signs_until = at + params.period;
        key.removed_after = key.signs_until + params.tail();
        changes.push(Change::Published {
            kid: key.kid.clone(),
            activates_at: at,
        });
        if let Some(active) = active_index(keys, now) {
            hand_over(&mut keys[active], at, params, changes);
        }
    }
}

/// Adds a key made of `material` that signs from `activates_at` (when `pending`, the
/// earliest it may).
fn create(
    inputs: &Inputs<'_>,
    material: NewKeyMaterial,
    activates_at: i64,
    pending: bool,
    keys: &mut Vec<ManagedKey>,
    changes: &mut Vec<Change>,
) {
    let params = inputs.params;
    let key = ManagedKey {
        kid: material.kid,
        alg: inputs.alg.to_owned(),
        published_at: inputs.now,
        activates_at,
        signs_until: activates_at + params.period,
        removed_after: activates_at + params.period + params.tail(),
        private_key: material.private_key,
        public_jwk: material.public_jwk,
        pending,
    };
    changes.push(Change::Created {
        kid: key.kid.clone(),
        activates_at,
        pending,
    });
    keys.push(key);
}

/// The successor of the `active` key: brought forward by a manual rotation or an algorithm
/// switch, or created when the active key nears the end of its window. Whether a manual
/// rotation has to wait because the document is full ([`MAX_KEYS`]).
fn successor<E>(
    inputs: &Inputs<'_>,
    active: usize,
    new_key: &mut dyn FnMut() -> Result<NewKeyMaterial, E>,
    keys: &mut Vec<ManagedKey>,
    changes: &mut Vec<Change>,
) -> Result<bool, E> {
    let (now, params) = (inputs.now, inputs.params);
    let successor = successor_index(keys, now);
    if inputs.requests.rotate || keys[active].alg != inputs.alg {
        let target = now + params.propagation;
        match successor {
            Some(s) if keys[s].pending => {
                // Scheduled when its publication is seen, at the earliest `propagation` later.
                if keys[s].activates_at > target {
                    reschedule(&mut keys[s], target, params);
                    changes.push(Change::Rescheduled(keys[s].kid.clone()));
                }
            }
            Some(s) => {
                // Never earlier than propagation after its own publication (the clock may
                // have stepped back since it was published).
                let target = target.max(keys[s].published_at + params.propagation);
                if keys[s].activates_at > target {
                    reschedule(&mut keys[s], target, params);
                    changes.push(Change::Rescheduled(keys[s].kid.clone()));
                    hand_over(&mut keys[active], target, params, changes);
                }
            }
            None if keys.len() >= MAX_KEYS && keys[active].alg == inputs.alg => return Ok(true),
            None => create(inputs, new_key()?, target, true, keys, changes),
        }
    } else if successor.is_none() && now >= keys[active].signs_until - params.lead() {
        let activates_at = keys[active].signs_until.max(now + params.propagation);
        create(inputs, new_key()?, activates_at, true, keys, changes);
    }
    Ok(false)
}

/// Public keys that verifiers still hold (or status lists) but the signing-keys document no
/// longer has, kept public-only until the tokens they may have signed have expired: after a
/// lost Secret or one restored from an older copy, tokens already issued keep verifying.
///
/// `known` are the times status recorded (kid → published, activates, signs-until,
/// removed-after); `public` the public keys found in the published key sets; `present` the
/// kids the document still has. A key without recorded times is kept for the longest it could
/// matter (a full period plus the token tail).
pub fn retained_public_keys(
    known: &[(String, [i64; 4])],
    public: &[Jwk],
    present: &BTreeSet<String>,
    revoked: Option<&str>,
    alg_of: &dyn Fn(&Jwk) -> Option<String>,
    now: i64,
    params: RotationParams,
) -> Vec<ManagedKey> {
    let mut seen = BTreeSet::new();
    let mut kept = Vec::new();
    for jwk in public {
        let Some(kid) = jwk.kid.clone() else { continue };
        if present.contains(&kid) || revoked == Some(kid.as_str()) || !seen.insert(kid.clone()) {
            continue;
        }
        let Some(alg) = alg_of(jwk) else { continue };
        let [published_at, activates_at, signs_until, removed_after] =
            known.iter().find(|(k, _)| *k == kid).map_or(
                [now, now, now, now + params.period + params.tail()],
                |(_, t)| *t,
            );
        if removed_after <= now {
            continue;
        }
        // It signs nothing from here on (no private half), whatever the old schedule said.
        let signs_until = signs_until.min(now);
        kept.push(ManagedKey {
            kid,
            alg,
            published_at: published_at.min(now),
            activates_at: activates_at.min(signs_until),
            signs_until,
            removed_after,
            private_key: String::new(),
            public_jwk: Some(jwk.clone()),
            pending: false,
        });
    }
    kept
}

fn reschedule(key: &mut ManagedKey, activates_at: i64, params: RotationParams) {
    key.activates_at = activates_at;
    key.signs_until = activates_at + params.period;
    key.removed_after = key.signs_until + params.tail();
}

/// Ends `key`'s signing window at `until`, when its successor starts. It stays published until
/// the last token it may sign has expired — and no longer, even when that is earlier than its
/// old schedule said (a manual rotation retires it early). An issuer sees this change within
/// `propagation`, before `until`.
fn hand_over(key: &mut ManagedKey, until: i64, params: RotationParams, changes: &mut Vec<Change>) {
    if key.signs_until == until {
        return;
    }
    key.signs_until = until;
    key.removed_after = until + params.tail();
    changes.push(Change::Rescheduled(key.kid.clone()));
}

/// Makes sure some key may sign at `now` when one can: a retiring key (still published) signs
/// again until the next key activates; after an emergency revocation with nothing retiring,
/// the earliest successor is promoted at once.
fn ensure_active_key(
    keys: &mut [ManagedKey],
    now: i64,
    params: RotationParams,
    emergency: bool,
    changes: &mut Vec<Change>,
) {
    if active_index(keys, now).is_some() {
        return;
    }
    let scheduled_successor = keys
        .iter()
        .filter(|k| k.state(now) == KeyState::Next && k.has_private_key() && !k.pending)
        .map(|k| k.activates_at)
        .min();
    let latest_retiring = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.state(now) == KeyState::Retiring && k.has_private_key())
        .max_by_key(|(_, k)| k.signs_until)
        .map(|(i, _)| i);
    if let Some(r) = latest_retiring {
        let until = scheduled_successor.unwrap_or(now + 2 * params.propagation);
        keys[r].signs_until = until;
        keys[r].removed_after = keys[r].removed_after.max(until + params.tail());
        changes.push(Change::Rescheduled(keys[r].kid.clone()));
    } else if emergency
        && let Some(p) = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.state(now) == KeyState::Next && k.has_private_key())
            .min_by_key(|(_, k)| k.activates_at)
            .map(|(i, _)| i)
    {
        let key = &mut keys[p];
        key.pending = false;
        key.published_at = key.published_at.min(now);
        reschedule(key, now, params);
        changes.push(Change::Rescheduled(key.kid.clone()));
    }
}

fn active_index(keys: &[ManagedKey], now: i64) -> Option<usize> {
    keys.iter()
        .enumerate()
        .filter(|(_, k)| k.state(now) == KeyState::Active)
        .max_by_key(|(_, k)| k.activates_at)
        .map(|(i, _)| i)
}

/// The key that will take over from the active one: the latest one that may still sign.
fn successor_index(keys: &[ManagedKey], now: i64) -> Option<usize> {
    keys.iter()
        .enumerate()
        .filter(|(_, k)| k.state(now) == KeyState::Next && k.has_private_key())
        .max_by_key(|(_, k)| k.activates_at)
        .map(|(i, _)| i)
}

/// The earliest future time at which the plan would change something. Pending keys change on
/// an observation, not at a time; the caller polls for that.
fn next_transition(keys: &[ManagedKey], now: i64, params: RotationParams) -> Option<i64> {
    let has_successor = successor_index(keys, now).is_some();
    let waiting = keys.iter().any(|k| k.pending && k.has_private_key());
    keys.iter()
        .flat_map(|k| {
            let active = k.state(now) == KeyState::Active;
            let successor_due = (active && !has_successor).then(|| k.signs_until - params.lead());
            let extend_due = (active && waiting).then(|| k.signs_until - params.propagation);
            let live = !k.pending && k.has_private_key();
            [
                live.then_some(k.activates_at),
                live.then_some(k.signs_until),
                Some(k.removed_after),
                successor_due,
                extend_due,
            ]
        })
        .flatten()
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::convert::Infallible;

    const PARAMS: RotationParams = RotationParams {
        period: 1000,
        propagation: 100,
        token_ttl: 300,
        leeway: 30,
    };

    fn new_key() -> Result<NewKeyMaterial, Infallible> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(NewKeyMaterial {
            kid: format!("k{n}"),
            private_key: "x".into(),
            public_jwk: Some(Jwk {
                kty: "EC".into(),
                kid: Some(format!("k{n}")),
                ..Jwk::default()
            }),
        })
    }

    /// One step in which every verifier holds `published`.
    fn step_seen(
        keys: &[ManagedKey],
        now: i64,
        requests: &Requests,
        published: &BTreeSet<String>,
    ) -> Plan {
        let inputs = Inputs {
            keys,
            now,
            params: PARAMS,
            alg: "ES256",
            requests,
            published,
            had_keys: !keys.is_empty(),
        };
        plan(&inputs, &mut new_key).unwrap()
    }

    /// One step in which the verifiers hold whatever the keys publish (the JWKS and configs
    /// written by the previous step have been observed).
    fn step(keys: &[ManagedKey], now: i64, requests: &Requests) -> Plan {
        let published = keys.iter().map(|k| k.kid.clone()).collect();
        step_seen(keys, now, requests, &published)
    }

    /// Steps until nothing is pending, observing publication each time.
    fn settle(keys: Vec<ManagedKey>, now: i64) -> Vec<ManagedKey> {
        let mut keys = keys;
        while keys.iter().any(|k| k.pending) {
            keys = step(&keys, now, &Requests::default()).keys;
        }
        keys
    }

    fn rotate() -> Requests {
        Requests {
            rotate: true,
            revoke_kid: None,
        }
    }

    fn signer(keys: &[ManagedKey], now: i64) -> Option<String> {
        keys.iter()
            .filter(|k| k.state(now) == KeyState::Active)
            .max_by_key(|k| k.activates_at)
            .map(|k| k.kid.clone())
    }

    #[test]
    fn first_key_signs_at_once_and_successor_is_published_ahead() {
        let first = step(&[], 0, &Requests::default());
        assert_eq!(first.keys.len(), 1);
        assert!(!first.keys[0].pending);
        assert_eq!(first.keys[0].activates_at, 0);
        assert_eq!(first.keys[0].signs_until, 1000);
        assert_eq!(
            first.next_transition,
            Some(800),
            "successor due 2x propagation early"
        );

        let second = step(&first.keys, 800, &Requests::default());
        assert_eq!(second.keys.len(), 2);
        let next = &second.keys[1];
        assert!(next.pending, "written first, signing nothing");
        let third = step(&second.keys, 805, &Requests::default());
        let next = &third.keys[1];
        assert!(!next.pending);
        assert_eq!(
            (next.published_at, next.activates_at),
            (805, 1000),
            "published when observed, activation unchanged"
        );
        assert_eq!(third.keys[0].removed_after, 1000 + 330);
        assert!(third.changes.contains(&Change::Published {
            kid: next.kid.clone(),
            activates_at: 1000
        }));
    }

    #[test]
    fn a_key_written_but_never_seen_published_never_signs() {
        let first = step(&[], 0, &Requests::default());
        let written = step(&first.keys, 850, &Requests::default());
        let successor = written.keys.iter().find(|k| k.pending).unwrap().kid.clone();
        // The operator dies after writing the Secret; nothing publishes the key; time passes
        // far beyond the planned activation.
        let nobody = BTreeSet::from([first.keys[0].kid.clone()]);
        let mut keys = written.keys;
        for now in (900..=3000).step_by(50) {
            keys = step_seen(&keys, now, &Requests::default(), &nobody).keys;
            assert_eq!(
                signer(&keys, now),
                Some(first.keys[0].kid.clone()),
                "at {now} the old key still signs"
            );
            assert!(keys.iter().any(|k| k.kid == successor && k.pending));
        }
        // Published at last: it signs `propagation` after that observation.
        let seen = step(&keys, 3010, &Requests::default());
        let new = seen.keys.iter().find(|k| k.kid == successor).unwrap();
        assert_eq!((new.published_at, new.activates_at), (3010, 3110));
        assert_eq!(signer(&seen.keys, 3100), Some(first.keys[0].kid.clone()));
        assert_eq!(signer(&seen.keys, 3110), Some(successor));
    }

    #[test]
    fn late_operator_extends_the_old_key_until_the_new_one_has_propagated() {
        let first = step(&[], 0, &Requests::default());
        let late = step(&first.keys, 950, &Requests::default());
        let seen = step(&late.keys, 955, &Requests::default());
        let next = seen.keys.iter().find(|k| k.published_at == 955).unwrap();
        assert_eq!(next.activates_at, 1055);
        assert_eq!(seen.keys[0].signs_until, 1055);
    }

    #[test]
    fn manual_rotation_waits_for_publication_then_retires_the_old_key_early() {
        let first = step(&[], 0, &Requests::default());
        let asked = step(&first.keys, 200, &rotate());
        assert_eq!(asked.keys.len(), 2);
        assert_eq!(asked.keys[0].signs_until, 1000, "untouched until published");
        let seen = step(&asked.keys, 203, &rotate());
        let (old, new) = (&seen.keys[0], &seen.keys[1]);
        assert_eq!(new.activates_at, 303, "propagation after the observation");
        assert_eq!(old.signs_until, 303);
        assert_eq!(
            old.removed_after,
            303 + 330,
            "retired once its last token expired, not a period later"
        );
    }

    #[test]
    fn repeated_manual_rotations_keep_the_jwks_bounded() {
        let mut now = 0;
        let mut keys = step(&[], now, &Requests::default()).keys;
        let bound = PARAMS.tail() / PARAMS.propagation + 3;
        let mut most = 0;
        for _ in 0..200 {
            // A rotation asked for as often as one can complete: each new key is written,
            // observed published, and signs `propagation` later.
            now += 10;
            keys = step(&keys, now, &rotate()).keys;
            now += 10;
            keys = step(&keys, now, &Requests::default()).keys;
            now += PARAMS.propagation;
            keys = step(&keys, now, &Requests::default()).keys;
            assert!(keys.iter().all(|k| !k.pending));
            let published = keys.iter().filter(|k| k.is_published(now)).count() as i64;
            most = most.max(published);
        }
        assert!(
            most <= bound,
            "{most} keys published at once (bound {bound})"
        );
        assert!(most >= 3, "the storm did overlap keys ({most})");
    }

    #[test]
    fn a_manual_rotation_waits_while_the_document_is_full() {
        // A day-long token lifetime over a one-minute propagation: each completed rotation
        // leaves a retired key for a day, far longer than a rotation takes.
        let params = RotationParams {
            period: 30 * 86_400,
            propagation: 60,
            token_ttl: 86_400,
            leeway: 30,
        };
        assert!(params.tail() / params.propagation > MAX_KEYS as i64);
        let step_with = |keys: &[ManagedKey], now: i64, requests: &Requests| {
            let published = keys.iter().map(|k| k.kid.clone()).collect();
            let inputs = Inputs {
                keys,
                now,
                params,
                alg: "ES256",
                requests,
                published: &published,
                had_keys: !keys.is_empty(),
            };
            plan(&inputs, &mut new_key).unwrap()
        };
        let mut now = 0;
        let mut keys = step_with(&[], now, &Requests::default()).keys;
        let mut deferred = 0;
        for _ in 0..100 {
            // A rotation asked for as often as one can complete (as in the test above).
            now += 10;
            let asked = step_with(&keys, now, &rotate());
            deferred += usize::from(asked.rotation_deferred);
            keys = asked.keys;
            now += 10;
            keys = step_with(&keys, now, &Requests::default()).keys;
            now += params.propagation;
            keys = step_with(&keys, now, &Requests::default()).keys;
            assert!(keys.len() <= MAX_KEYS, "{} keys", keys.len());
            let signing = scopegate_core::keys::SigningKeys { keys: keys.clone() };
            assert!(signing.signing_key(now).is_some(), "nothing signs at {now}");
        }
        assert!(deferred > 0, "the cap was never reached");
        // Once the oldest retired keys are gone, a rotation goes through again.
        now += params.tail() + 1;
        keys = step_with(&keys, now, &Requests::default()).keys;
        let asked = step_with(&keys, now + 1, &rotate());
        assert!(!asked.rotation_deferred);
        assert!(asked.keys.len() < MAX_KEYS);
    }

    #[test]
    fn emergency_revocation_removes_the_kid_at_once_and_something_still_signs() {
        let first = step(&[], 0, &Requests::default());
        let kid = first.keys[0].kid.clone();
        let revoked = step(
            &first.keys,
            10,
            &Requests {
                rotate: false,
                revoke_kid: Some(kid.clone()),
            },
        );
        assert!(revoked.keys.iter().all(|k| k.kid != kid));
        assert!(revoked.changes.contains(&Change::Revoked(kid)));
        assert_eq!(signer(&revoked.keys, 10).iter().count(), 1);
    }

    #[test]
    fn emergency_revocation_promotes_a_pending_successor() {
        let first = step(&[], 0, &Requests::default());
        let written = step(&first.keys, 850, &Requests::default());
        let successor = written.keys.iter().find(|k| k.pending).unwrap().kid.clone();
        let revoked = step_seen(
            &written.keys,
            860,
            &Requests {
                rotate: false,
                revoke_kid: Some(first.keys[0].kid.clone()),
            },
            &BTreeSet::new(),
        );
        assert_eq!(signer(&revoked.keys, 860), Some(successor));
    }

    #[test]
    fn clock_stepping_back_before_first_activation_creates_nothing() {
        let first = step(&[], 1000, &Requests::default());
        let back = step(&first.keys, 500, &Requests::default());
        assert_eq!(back.keys, first.keys);
    }

    #[test]
    fn after_a_lost_secret_public_keys_stay_and_the_new_key_is_published_first() {
        let first = step(&[], 0, &Requests::default());
        let mut keys = step(&first.keys, 850, &Requests::default()).keys;
        keys = settle(keys, 860);
        let jwks: Vec<Jwk> = keys.iter().filter_map(|k| k.public_jwk.clone()).collect();
        let known: Vec<(String, [i64; 4])> = keys
            .iter()
            .map(|k| {
                (
                    k.kid.clone(),
                    [
                        k.published_at,
                        k.activates_at,
                        k.signs_until,
                        k.removed_after,
                    ],
                )
            })
            .collect();
        // The Secret is deleted at 900.
        let retained = retained_public_keys(
            &known,
            &jwks,
            &BTreeSet::new(),
            None,
            &|_| Some("ES256".into()),
            900,
            PARAMS,
        );
        assert_eq!(retained.len(), 2);
        assert!(retained.iter().all(|k| !k.has_private_key()));
        assert_eq!(
            retained[0].removed_after, keys[0].removed_after,
            "kept until expiry"
        );
        let inputs = Inputs {
            keys: &retained,
            now: 900,
            params: PARAMS,
            alg: "ES256",
            requests: &Requests::default(),
            published: &retained.iter().map(|k| k.kid.clone()).collect(),
            had_keys: true,
        };
        let recovered = plan(&inputs, &mut new_key).unwrap();
        assert_eq!(recovered.keys.len(), 3);
        let new = recovered.pending().unwrap().clone();
        assert_eq!(
            signer(&recovered.keys, 900),
            None,
            "nothing signs unpublished"
        );
        assert_eq!(signer(&recovered.keys, 5000), None);
        let seen = step(&recovered.keys, 910, &Requests::default());
        assert_eq!(signer(&seen.keys, 1009), None);
        assert_eq!(signer(&seen.keys, 1010), Some(new.kid));
        // Public-only keys leave when their tokens have expired.
        let later = step(&seen.keys, keys[1].removed_after, &Requests::default());
        assert!(later.keys.iter().all(|k| k.has_private_key()));
    }

    #[test]
    fn retained_keys_skip_present_revoked_and_expired_ones() {
        let jwk = |kid: &str| Jwk {
            kty: "EC".into(),
            kid: Some(kid.into()),
            ..Jwk::default()
        };
        let known = vec![
            ("gone".to_owned(), [0, 0, 10, 50]),
            ("old".to_owned(), [0, 0, 100, 500]),
        ];
        let kept = retained_public_keys(
            &known,
            &[
                jwk("present"),
                jwk("revoked"),
                jwk("gone"),
                jwk("old"),
                jwk("unknown"),
                jwk("old"),
            ],
            &BTreeSet::from(["present".to_owned()]),
            Some("revoked"),
            &|_| Some("ES256".into()),
            60,
            PARAMS,
        );
        let kids: Vec<&str> = kept.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["old", "unknown"]);
        assert_eq!(kept[0].removed_after, 500);
        assert_eq!(kept[1].removed_after, 60 + PARAMS.period + PARAMS.tail());
        assert!(kept.iter().all(|k| k.state(60) == KeyState::Retiring));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Advance(i64),
        StepBack(i64),
        Rotate,
        RevokeActive,
        /// The JWKS and sidecar configs the last step wrote are observed everywhere.
        Publish,
        Restart,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            6 => (1i64..400).prop_map(Event::Advance),
            1 => (1i64..200).prop_map(Event::StepBack),
            1 => Just(Event::Rotate),
            1 => Just(Event::RevokeActive),
            4 => Just(Event::Publish),
            1 => Just(Event::Restart),
        ]
    }

    proptest! {
        /// Over random schedules, restarts (the plan is re-run from the stored keys), manual
        /// rotations, emergency revocations, clock steps and publications observed late or
        /// never:
        /// - a key that signs is held by every verifier, and was for `propagation` (except
        ///   the first key and emergency replacements);
        /// - a key that may have signed an unexpired token stays published (only emergency
        ///   revocation removes one early);
        /// - the number of published keys stays bounded.
        #[test]
        fn rotation_invariants(events in proptest::collection::vec(event(), 1..80)) {
            let mut now = 0i64;
            let mut keys = step(&[], now, &Requests::default()).keys;
            let mut immediate: Vec<String> = vec![keys[0].kid.clone()];
            // What the verifiers hold: kid -> when it was first seen there (None after a
            // clock step back, when "how long" is not measurable).
            let mut view: HashMap<String, Option<i64>> =
                keys.iter().map(|k| (k.kid.clone(), Some(now))).collect();
            // kid -> latest exp of a token it may have signed so far
            let mut signed_until: HashMap<String, i64> = HashMap::new();
            let bound = ((PARAMS.period + PARAMS.tail() + 2 * PARAMS.propagation)
                / PARAMS.propagation.min(PARAMS.period)) as usize + 3;

            let mut latest = now;
            for event in events {
                let mut requests = Requests::default();
                match event {
                    Event::Advance(d) => now += d,
                    Event::StepBack(d) => {
                        // Clocks never disagree by more than `propagation` (see the module
                        // documentation): the clock steps back at most that far behind the
                        // latest time it showed.
                        now = (now - d).max(latest - PARAMS.propagation + 1);
                        for since in view.values_mut() {
                            *since = None;
                        }
                    }
                    Event::Rotate => requests.rotate = true,
                    Event::RevokeActive => {
                        requests.revoke_kid = signer(&keys, now);
                    }
                    Event::Publish => {
                        let written: BTreeSet<String> = keys
                            .iter()
                            .filter(|k| k.is_published(now) || k.pending)
                            .map(|k| k.kid.clone())
                            .collect();
                        view.retain(|kid, _| written.contains(kid));
                        for kid in written {
                            view.entry(kid).or_insert(Some(now));
                        }
                    }
                    Event::Restart => {}
                }
                latest = latest.max(now);
                let published: BTreeSet<String> = view.keys().cloned().collect();
                let before: Vec<String> = keys.iter().map(|k| k.kid.clone()).collect();
                let plan = step_seen(&keys, now, &requests, &published);
                for key in &plan.keys {
                    if key.state(now) == KeyState::Active && !before.contains(&key.kid) {
                        prop_assert!(requests.revoke_kid.is_some(),
                            "key {} created signing at once", key.kid);
                        immediate.push(key.kid.clone());
                    }
                }
                // A key promoted in an emergency may sign early too.
                if requests.revoke_kid.is_some() {
                    for key in &plan.keys {
                        if key.state(now) == KeyState::Active && key.activates_at == now {
                            immediate.push(key.kid.clone());
                        }
                    }
                }
                keys = plan.keys;

                if let Some(kid) = signer(&keys, now) {
                    let key = keys.iter().find(|k| k.kid == kid).unwrap();
                    if !immediate.contains(&kid) {
                        prop_assert!(view.contains_key(&kid),
                            "{kid} signs at {now} and no verifier holds it");
                        if let Some(Some(since)) = view.get(&kid) {
                            prop_assert!(now - since >= PARAMS.propagation,
                                "{kid} signs {}s after verifiers were given it", now - since);
                        }
                        prop_assert!(key.activates_at - key.published_at >= PARAMS.propagation,
                            "{kid} signs after {}s of publication", key.activates_at - key.published_at);
                    }
                    // The issuer caps exp at removed_after - leeway.
                    let exp = (now + PARAMS.token_ttl).min(key.max_token_expiry(PARAMS.leeway));
                    let entry = signed_until.entry(kid).or_insert(exp);
                    *entry = (*entry).max(exp);
                }
                for (kid, exp) in &signed_until {
                    let revoked = requests.revoke_kid.as_deref() == Some(kid.as_str());
                    let present = keys.iter().any(|k| &k.kid == kid);
                    if !present && !revoked && before.contains(kid) {
                        prop_assert!(now >= exp + PARAMS.leeway, "{kid} removed at {now} while a token until {exp} may exist");
                    }
                }
                let published = keys.iter().filter(|k| k.is_published(now)).count();
                prop_assert!(published <= bound, "{published} keys published (bound {bound})");
                prop_assert!(keys.iter().filter(|k| k.pending).count() <= 1, "one pending key at most");
            }
        }
    }
}
