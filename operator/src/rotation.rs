//! Publish-before-sign key rotation as a pure function of the current keys and the clock.
//!
//! Every key carries its schedule (see [`scopegate_core::keys`]). [`plan`] moves the set one
//! step: it drops keys whose removal time passed, creates the successor of the active key at
//! least `propagation` before it must sign, honours manual rotations and emergency
//! revocations, and never shortens a key's publication (so an issuer whose mounted copy lags
//! cannot mint a token that outlives its key in the JWKS). The caller supplies key material
//! through a factory, so the schedule logic is testable without crypto or an API server.
//!
//! Exceptions to "published for `propagation` before it signs", both unavoidable: the very
//! first key of an issuer (no verifier can hold an older set, so nothing is rejected that was
//! not rejected anyway), and the replacement of an emergency-revoked key when no other
//! published key can take over.

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
    fn tail(&self) -> i64 {
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

/// The result of one planning step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The keys to store.
    pub keys: Vec<ManagedKey>,
    /// What changed.
    pub changes: Vec<Change>,
    /// When the next transition is due (for the requeue).
    pub next_transition: Option<i64>,
}

/// Moves `existing` one step at time `now`. `new_key` makes key material for `alg`.
pub fn plan<E>(
    existing: &[ManagedKey],
    now: i64,
    params: RotationParams,
    alg: &str,
    requests: &Requests,
    new_key: &mut dyn FnMut() -> Result<NewKeyMaterial, E>,
) -> Result<Plan, E> {
    let mut keys: Vec<ManagedKey> = existing.to_vec();
    let mut changes = Vec::new();
    let mut emergency = false;

    if let Some(kid) = &requests.revoke_kid
        && let Some(position) = keys.iter().position(|k| &k.kid == kid)
    {
        emergency = keys[position].state(now) == KeyState::Active;
        keys.remove(position);
        changes.push(Change::Revoked(kid.clone()));
    }

    keys.retain(|k| {
        let keep = k.state(now) != KeyState::Removed;
        if !keep {
            changes.push(Change::Removed(k.kid.clone()));
        }
        keep
    });

    let make = |material: NewKeyMaterial, published_at, activates_at| ManagedKey {
        kid: material.kid,
        alg: alg.to_owned(),
        published_at,
        activates_at,
        signs_until: activates_at + params.period,
        removed_after: activates_at + params.period + params.tail(),
        private_key: material.private_key,
        public_jwk: material.public_jwk,
        pending: false,
    };

    if keys.is_empty() {
        let key = make(new_key()?, now, now);
        changes.push(Change::Created {
            kid: key.kid.clone(),
            activates_at: now,
        });
        keys.push(key);
    }

    ensure_active_key(&mut keys, now, params, emergency, &mut changes);

    let Some(active) = active_index(&keys, now) else {
        // Keys exist but none may sign yet (the clock stepped back before the first
        // activation): wait for it rather than mint a duplicate.
        let next_transition = next_transition(&keys, now, params);
        return Ok(Plan {
            keys,
            changes,
            next_transition,
        });
    };

    // A pending successor that no longer fits the policy's algorithm never signed: drop it.
    let mut pending = pending_index(&keys, now);
    if let Some(p) = pending
        && keys[p].alg != alg
    {
        changes.push(Change::Removed(keys[p].kid.clone()));
        keys.remove(p);
        pending = None;
    }
    let active = if pending.is_none() {
        active_index(&keys, now).unwrap_or(active)
    } else {
        active
    };

    let wants_successor_soon = requests.rotate || keys[active].alg != alg;
    if wants_successor_soon {
        let target = now + params.propagation;
        let successor_start = match pending {
            Some(p) => {
                // Never earlier than propagation after its own publication (the clock may
                // have stepped back since it was published).
                let target = target.max(keys[p].published_at + params.propagation);
                if keys[p].activates_at > target {
                    keys[p].activates_at = target;
                    keys[p].signs_until = target + params.period;
                    keys[p].removed_after = keys[p].signs_until + params.tail();
                    changes.push(Change::Rescheduled(keys[p].kid.clone()));
                }
                keys[p].activates_at
            }
            None => {
                let key = make(new_key()?, now, target);
                changes.push(Change::Created {
                    kid: key.kid.clone(),
                    activates_at: target,
                });
                keys.push(key);
                target
            }
        };
        set_signs_until(&mut keys[active], successor_start, params, &mut changes);
    } else if pending.is_none() && now >= keys[active].signs_until - params.lead() {
        let activates_at = keys[active].signs_until.max(now + params.propagation);
        let key = make(new_key()?, now, activates_at);
        changes.push(Change::Created {
            kid: key.kid.clone(),
            activates_at,
        });
        keys.push(key);
        set_signs_until(&mut keys[active], activates_at, params, &mut changes);
    }

    keys.sort_by_key(|k| k.activates_at);
    let next_transition = next_transition(&keys, now, params);
    Ok(Plan {
        keys,
        changes,
        next_transition,
    })
}

/// Makes sure some key may sign at `now` when keys exist: a retiring key (still published)
/// signs again until the next key activates; after an emergency revocation with nothing
/// retiring, the earliest pending key is promoted at once.
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
    let earliest_pending = keys
        .iter()
        .filter(|k| k.state(now) == KeyState::Next)
        .map(|k| k.activates_at)
        .min();
    let latest_retiring = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.state(now) == KeyState::Retiring)
        .max_by_key(|(_, k)| k.signs_until)
        .map(|(i, _)| i);
    if let Some(r) = latest_retiring {
        let until = earliest_pending.unwrap_or(now + params.propagation);
        keys[r].signs_until = until;
        keys[r].removed_after = keys[r].removed_after.max(until + params.tail());
        changes.push(Change::Rescheduled(keys[r].kid.clone()));
    } else if emergency
        && let Some(p) = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.state(now) == KeyState::Next)
            .min_by_key(|(_, k)| k.activates_at)
            .map(|(i, _)| i)
    {
        keys[p].activates_at = now;
        changes.push(Change::Rescheduled(keys[p].kid.clone()));
    }
}

/// Moves the end of a key's signing window, never shortening its publication.
fn set_signs_until(
    key: &mut ManagedKey,
    until: i64,
    params: RotationParams,
    changes: &mut Vec<Change>,
) {
    if key.signs_until == until {
        return;
    }
    key.signs_until = until;
    key.removed_after = key.removed_after.max(until + params.tail());
    changes.push(Change::Rescheduled(key.kid.clone()));
}

fn active_index(keys: &[ManagedKey], now: i64) -> Option<usize> {
    keys.iter()
        .enumerate()
        .filter(|(_, k)| k.state(now) == KeyState::Active)
        .max_by_key(|(_, k)| k.activates_at)
        .map(|(i, _)| i)
}

fn pending_index(keys: &[ManagedKey], now: i64) -> Option<usize> {
    keys.iter()
        .enumerate()
        .filter(|(_, k)| k.state(now) == KeyState::Next)
        .max_by_key(|(_, k)| k.activates_at)
        .map(|(i, _)| i)
}

/// The earliest future time at which the plan would change something.
fn next_transition(keys: &[ManagedKey], now: i64, params: RotationParams) -> Option<i64> {
    let has_pending = pending_index(keys, now).is_some();
    keys.iter()
        .flat_map(|k| {
            let successor_due = (k.state(now) == KeyState::Active && !has_pending)
                .then(|| k.signs_until - params.lead());
            [
                Some(k.activates_at),
                Some(k.signs_until),
                Some(k.removed_after),
                successor_due,
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
            public_jwk: None,
        })
    }

    fn step(keys: &[ManagedKey], now: i64, requests: &Requests) -> Plan {
        plan(keys, now, PARAMS, "ES256", requests, &mut new_key).unwrap()
    }

    #[test]
    fn first_key_signs_at_once_and_successor_is_published_ahead() {
        let first = step(&[], 0, &Requests::default());
        assert_eq!(first.keys.len(), 1);
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
        assert_eq!((next.published_at, next.activates_at), (800, 1000));
        assert_eq!(second.keys[0].removed_after, 1000 + 330);
    }

    #[test]
    fn late_operator_extends_the_old_key_until_the_new_one_has_propagated() {
        let first = step(&[], 0, &Requests::default());
        let late = step(&first.keys, 950, &Requests::default());
        let next = late.keys.iter().find(|k| k.published_at == 950).unwrap();
        assert_eq!(next.activates_at, 1050);
        assert_eq!(late.keys[0].signs_until, 1050);
    }

    #[test]
    fn manual_rotation_activates_successor_after_propagation_without_shortening_publication() {
        let first = step(&[], 0, &Requests::default());
        let rotated = step(
            &first.keys,
            200,
            &Requests {
                rotate: true,
                revoke_kid: None,
            },
        );
        let old = &rotated.keys[0];
        let new = &rotated.keys[1];
        assert_eq!(new.activates_at, 300);
        assert_eq!(old.signs_until, 300);
        assert_eq!(old.removed_after, 1330, "publication is never shortened");
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
        let signing: Vec<_> = revoked
            .keys
            .iter()
            .filter(|k| k.state(10) == KeyState::Active)
            .collect();
        assert_eq!(signing.len(), 1);
    }

    #[test]
    fn clock_stepping_back_before_first_activation_creates_nothing() {
        let first = step(&[], 1000, &Requests::default());
        let back = step(&first.keys, 500, &Requests::default());
        assert_eq!(back.keys, first.keys);
    }

    #[derive(Debug, Clone)]
    enum Event {
        Advance(i64),
        StepBack(i64),
        Rotate,
        RevokeActive,
        Restart,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            6 => (1i64..400).prop_map(Event::Advance),
            1 => (1i64..200).prop_map(Event::StepBack),
            1 => Just(Event::Rotate),
            1 => Just(Event::RevokeActive),
            1 => Just(Event::Restart),
        ]
    }

    proptest! {
        /// Over random schedules, restarts (the plan is re-run from the stored keys), manual
        /// rotations, emergency revocations and clock steps:
        /// - a key that signs has been published for at least `propagation` (except the first
        ///   key and emergency replacements);
        /// - a key that may have signed an unexpired token stays published (only emergency
        ///   revocation removes one early);
        /// - the number of published keys stays bounded.
        #[test]
        fn rotation_invariants(events in proptest::collection::vec(event(), 1..80)) {
            let mut now = 0i64;
            let mut keys = step(&[], now, &Requests::default()).keys;
            let first_kid = keys[0].kid.clone();
            let mut immediate: Vec<String> = vec![first_kid];
            // kid -> latest exp of a token it may have signed so far
            let mut signed_until: std::collections::HashMap<String, i64> = Default::default();
            let bound = ((PARAMS.period + PARAMS.tail() + PARAMS.propagation) / PARAMS.propagation.min(PARAMS.period)) as usize + 3;

            for event in events {
                let mut requests = Requests::default();
                match event {
                    Event::Advance(d) => now += d,
                    Event::StepBack(d) => now -= d,
                    Event::Rotate => requests.rotate = true,
                    Event::RevokeActive => {
                        requests.revoke_kid = keys.iter().find(|k| k.state(now) == KeyState::Active).map(|k| k.kid.clone());
                    }
                    Event::Restart => {}
                }
                let before: Vec<String> = keys.iter().map(|k| k.kid.clone()).collect();
                let plan = step(&keys, now, &requests);
                for key in &plan.keys {
                    if !before.contains(&key.kid) && key.activates_at - key.published_at < PARAMS.propagation {
                        prop_assert!(requests.revoke_kid.is_some() || before.is_empty(),
                            "key {} created to sign after only {}s", key.kid, key.activates_at - key.published_at);
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

                if let Some(signer) = keys.iter().filter(|k| k.state(now) == KeyState::Active).max_by_key(|k| k.activates_at) {
                    if !immediate.contains(&signer.kid) {
                        prop_assert!(signer.activates_at - signer.published_at >= PARAMS.propagation,
                            "{} signs after {}s of publication", signer.kid, signer.activates_at - signer.published_at);
                    }
                    // The issuer caps exp at removed_after - leeway.
                    let exp = (now + PARAMS.token_ttl).min(signer.max_token_expiry(PARAMS.leeway));
                    let entry = signed_until.entry(signer.kid.clone()).or_insert(exp);
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
            }
        }
    }
}
