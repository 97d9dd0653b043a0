//! The rotation of session keys as a pure function of the keys stored, the clock and the
//! policy's settings: which key to add, when an old key retires, and which keys to drop.
//!
//! A key is written [`lead`] before it starts sealing, so that every replica holds it before
//! any replica seals a cookie with it (a replica whose mounted Secret lags would not open that
//! cookie). Once a newer key seals, an older key keeps opening cookies until its successor's
//! sealing time plus `maxLifetime`: a cookie it sealed belongs to a session that started
//! before that and lasts at most `maxLifetime` (cookies are resealed with the newest key on
//! refresh, but a session may be idle). A retired key is dropped [`DROP_MARGIN_SECS`] after
//! it retired, for the clocks of the operator and the sidecars to disagree a little.
//!
//! The very first key, and the key that replaces every other on a manual rotation, seal at
//! once: there is nothing older that a lagging replica could still be using instead.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use scopegate_core::session::{SessionKey, SessionKeys};

/// Longest time a key is written before it seals.
pub const LEAD_SECS: i64 = 300;
/// Time a retired key stays in the Secret after it retired.
pub const DROP_MARGIN_SECS: i64 = 300;
/// Most keys the Secret holds; a rotation waits for the oldest to go (the schema keeps
/// maxLifetime within 16 rotations, so a policy within it stays below this).
pub const MAX_KEYS: usize = 20;
/// Length of a key's secret, in bytes (AES-256-GCM).
pub const SECRET_BYTES: usize = 32;

/// How a policy rotates its session keys, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// How long a key seals before its successor takes over (`keyRotation`).
    pub rotation: i64,
    /// The longest a session lasts (`maxLifetime`).
    pub max_lifetime: i64,
}

/// How long before it seals a new key is written: [`LEAD_SECS`], or half the rotation when
/// that is shorter.
pub fn lead(schedule: Schedule) -> i64 {
    LEAD_SECS.min(schedule.rotation / 2)
}

/// A change of the keys, for events (ids only: never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was added; it seals from `seals_from`.
    Created {
        /// Its id.
        id: String,
        /// When it starts sealing.
        seals_from: i64,
    },
    /// A key has a successor and opens cookies until `retire_at`.
    Retiring {
        /// Its id.
        id: String,
        /// When it stops opening cookies.
        retire_at: i64,
    },
    /// A key retired long enough ago was dropped.
    Removed(String),
    /// A stored key was unusable (not 32 bytes of base64url) and was dropped.
    Discarded(String),
    /// A manual rotation retired every key at once.
    Replaced(usize),
}

/// The result of one planning step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The keys to store, oldest first.
    pub keys: SessionKeys,
    /// What changed (empty: nothing to write).
    pub changes: Vec<Change>,
    /// When the keys change next (a key to add, a key to drop).
    pub next_change: Option<i64>,
}

/// Moves `current` one step at `now`. `rotate_now` replaces every key at once (every
/// session ends); `new_key(created_at, seals_from)` makes a key.
pub fn plan(
    current: &SessionKeys,
    now: i64,
    schedule: Schedule,
    rotate_now: bool,
    new_key: &mut dyn FnMut(i64, Option<i64>) -> SessionKey,
) -> Plan {
    let mut changes = Vec::new();
    let mut keys: Vec<SessionKey> = Vec::with_capacity(current.keys.len() + 1);
    for key in &current.keys {
        if usable(key) {
            keys.push(key.clone());
        } else {
            changes.push(Change::Discarded(key.id.clone()));
        }
    }
    if rotate_now {
        let retired = keys
            .iter_mut()
            .filter(|k| k.retire_at.is_none_or(|r| r > now))
            .map(|k| k.retire_at = Some(now))
            .count();
        changes.push(Change::Replaced(retired));
    }
    keys.retain(|k| {
        let gone = k.retire_at.is_some_and(|r| r + DROP_MARGIN_SECS <= now);
        if gone {
            changes.push(Change::Removed(k.id.clone()));
        }
        !gone
    });
    let lead = lead(schedule);
    let newest = sealing_chain_head(&keys).map(SessionKey::seals_from);
    let due = newest.map(|from| from + schedule.rotation - lead);
    let add = match (newest, due) {
        (None, _) => Some(None),
        (Some(from), Some(due)) if now >= due && keys.len() < MAX_KEYS => {
            Some(Some((now + lead).max(from + schedule.rotation)))
        }
        _ => None,
    };
    if let Some(seals_from) = add {
        let key = new_key(now, seals_from);
        changes.push(Change::Created {
            id: key.id.clone(),
            seals_from: key.seals_from(),
        });
        keys.push(key);
    }
    retire_predecessors(&mut keys, schedule, &mut changes);
    let next_change = next_change(&keys, schedule);
    Plan {
        keys: SessionKeys { keys },
        changes,
        next_change,
    }
}

/// Whether a stored key can seal and open: an id, and a secret of [`SECRET_BYTES`].
fn usable(key: &SessionKey) -> bool {
    !key.id.is_empty()
        && URL_SAFE_NO_PAD
            .decode(&key.secret)
            .is_ok_and(|bytes| bytes.len() == SECRET_BYTES)
}

/// The key that seals last of those not retired (the one whose successor is due next).
fn sealing_chain_head(keys: &[SessionKey]) -> Option<&SessionKey> {
    keys.iter()
        .filter(|k| k.retire_at.is_none())
        .max_by_key(|k| k.seals_from())
}

/// Gives each key not yet retiring that has a successor its retirement: the successor's
/// sealing time plus the longest session.
fn retire_predecessors(keys: &mut [SessionKey], schedule: Schedule, changes: &mut Vec<Change>) {
    let mut starts: Vec<i64> = keys.iter().map(SessionKey::seals_from).collect();
    starts.sort_unstable();
    for key in keys.iter_mut().filter(|k| k.retire_at.is_none()) {
        let from = key.seals_from();
        if let Some(successor) = starts.iter().find(|s| **s > from) {
            let retire_at = successor + schedule.max_lifetime;
            key.retire_at = Some(retire_at);
            changes.push(Change::Retiring {
                id: key.id.clone(),
                retire_at,
            });
        }
    }
}

/// The next time the keys change: the newest key's successor is due, or a retired key goes.
fn next_change(keys: &[SessionKey], schedule: Schedule) -> Option<i64> {
    let drops = keys
        .iter()
        .filter_map(|k| k.retire_at.map(|r| r + DROP_MARGIN_SECS));
    let successor = (keys.len() < MAX_KEYS)
        .then(|| sealing_chain_head(keys))
        .flatten()
        .map(|k| k.seals_from() + schedule.rotation - lead(schedule));
    drops.chain(successor).min()
}

/// A new key with 32 random bytes and a random id, made at `created_at`, sealing from
/// `seals_from` (`None`: at once).
pub fn generate(
    created_at: i64,
    seals_from: Option<i64>,
) -> Result<SessionKey, aws_lc_rs::error::Unspecified> {
    let mut secret = [0u8; SECRET_BYTES];
    aws_lc_rs::rand::fill(&mut secret)?;
    let mut id = [0u8; 9];
    aws_lc_rs::rand::fill(&mut id)?;
    Ok(SessionKey {
        id: URL_SAFE_NO_PAD.encode(id),
        secret: URL_SAFE_NO_PAD.encode(secret),
        created_at,
        seals_from,
        retire_at: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;
    const SCHEDULE: Schedule = Schedule {
        rotation: DAY,
        max_lifetime: 8 * HOUR,
    };

    /// Keys with ids k1, k2, ... in the order they are made.
    fn maker() -> impl FnMut(i64, Option<i64>) -> SessionKey {
        let mut made = 0;
        move |created_at, seals_from| {
            made += 1;
            SessionKey {
                id: format!("k{made}"),
                secret: URL_SAFE_NO_PAD.encode([made as u8; SECRET_BYTES]),
                created_at,
                seals_from,
                retire_at: None,
            }
        }
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.keys.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Runs the planner from `start` to `end`, stepping at each planned change.
    fn run(start: i64, end: i64) -> (Plan, Vec<Change>) {
        let mut make = maker();
        let mut plan = plan(&SessionKeys::default(), start, SCHEDULE, false, &mut make);
        let mut all = plan.changes.clone();
        let mut steps = 0;
        while let Some(next) = plan.next_change.filter(|t| *t <= end) {
            plan = super::plan(&plan.keys, next, SCHEDULE, false, &mut make);
            all.extend(plan.changes.clone());
            steps += 1;
            assert!(
                steps < 1_000,
                "the planner does not move on: {:?}",
                plan.keys
            );
        }
        (plan, all)
    }

    #[test]
    fn the_first_key_seals_at_once_and_its_successor_is_written_ahead() {
        let mut make = maker();
        let first = plan(&SessionKeys::default(), 0, SCHEDULE, false, &mut make);
        assert_eq!(ids(&first), ["k1"]);
        assert_eq!(first.keys.sealing_key(0).unwrap().id, "k1");
        // The successor is due the lead before the first key's day is over.
        assert_eq!(first.next_change, Some(DAY - LEAD_SECS));
        let quiet = plan(&first.keys, DAY - LEAD_SECS - 1, SCHEDULE, false, &mut make);
        assert!(quiet.changes.is_empty(), "{:?}", quiet.changes);

        let second = plan(&first.keys, DAY - LEAD_SECS, SCHEDULE, false, &mut make);
        assert_eq!(ids(&second), ["k1", "k2"]);
        let k2 = &second.keys.keys[1];
        assert_eq!((k2.created_at, k2.seals_from), (DAY - LEAD_SECS, Some(DAY)));
        // Written ahead: k1 still seals, and both open, until k2's sealing time.
        assert_eq!(second.keys.sealing_key(DAY - 1).unwrap().id, "k1");
        assert!(second.keys.opening_key("k2", DAY - 1).is_some());
        assert_eq!(second.keys.sealing_key(DAY).unwrap().id, "k2");
        // k1 opens every cookie it sealed: until k2 seals plus the longest session.
        assert_eq!(second.keys.keys[0].retire_at, Some(DAY + 8 * HOUR));
        assert!(second.keys.opening_key("k1", DAY + 8 * HOUR - 1).is_some());
        assert!(second.keys.opening_key("k1", DAY + 8 * HOUR).is_none());
        assert!(second.changes.contains(&Change::Retiring {
            id: "k1".into(),
            retire_at: DAY + 8 * HOUR
        }));
    }

    #[test]
    fn a_retired_key_is_dropped_after_the_margin_and_the_set_stays_small() {
        let (plan, changes) = run(0, 10 * DAY);
        // Ten days: k1..k11 made, all but the last two (the sealing one and the one written
        // ahead of it) dropped.
        assert!(changes.contains(&Change::Removed("k1".into())));
        assert!(plan.keys.keys.len() <= 3, "{:?}", ids(&plan));
        let (plan, _) = run(0, DAY + 8 * HOUR + DROP_MARGIN_SECS - 1);
        assert_eq!(ids(&plan), ["k1", "k2"], "kept until the margin has passed");
        let (plan, _) = run(0, DAY + 8 * HOUR + DROP_MARGIN_SECS);
        assert_eq!(ids(&plan), ["k2"]);
        // At every step some key seals and every key sealing earlier still opens.
        let mut make = maker();
        let mut step = super::plan(&SessionKeys::default(), 0, SCHEDULE, false, &mut make);
        for t in (0..5 * DAY).step_by(600) {
            step = super::plan(&step.keys, t, SCHEDULE, false, &mut make);
            let sealing = step.keys.sealing_key(t).unwrap();
            assert!(sealing.seals_from() <= t);
            assert!(step.keys.keys.len() <= 3);
        }
    }

    #[test]
    fn a_late_operator_still_writes_the_key_ahead() {
        let mut make = maker();
        let first = plan(&SessionKeys::default(), 0, SCHEDULE, false, &mut make);
        // The operator was away for two days.
        let late = plan(&first.keys, 3 * DAY, SCHEDULE, false, &mut make);
        let k2 = &late.keys.keys[1];
        assert_eq!(k2.seals_from, Some(3 * DAY + LEAD_SECS));
        assert_eq!(late.keys.sealing_key(3 * DAY).unwrap().id, "k1");
    }

    #[test]
    fn a_manual_rotation_retires_every_key_at_once() {
        let (before, _) = run(0, DAY);
        let mut make = maker();
        let _ = make(0, None);
        let _ = make(0, None);
        let now = DAY + HOUR;
        let rotated = plan(&before.keys, now, SCHEDULE, true, &mut make);
        assert!(rotated.changes.contains(&Change::Replaced(2)));
        assert_eq!(rotated.keys.sealing_key(now).unwrap().id, "k3");
        assert!(rotated.keys.opening_key("k1", now).is_none());
        assert!(rotated.keys.opening_key("k2", now).is_none());
        assert_eq!(rotated.next_change, Some(now + DROP_MARGIN_SECS));
        let later = plan(
            &rotated.keys,
            now + DROP_MARGIN_SECS,
            SCHEDULE,
            false,
            &mut make,
        );
        assert_eq!(ids(&later), ["k3"]);
    }

    #[test]
    fn an_unusable_key_is_discarded_and_a_short_rotation_writes_ahead_by_half() {
        let broken = SessionKeys {
            keys: vec![SessionKey {
                id: "bad".into(),
                secret: "c2hvcnQ".into(),
                created_at: 0,
                seals_from: None,
                retire_at: None,
            }],
        };
        let mut make = maker();
        let plan = plan(&broken, 10, SCHEDULE, false, &mut make);
        assert_eq!(ids(&plan), ["k1"]);
        assert!(plan.changes.contains(&Change::Discarded("bad".into())));
        let short = Schedule {
            rotation: 60,
            max_lifetime: 120,
        };
        assert_eq!(lead(short), 30);
        assert_eq!(lead(SCHEDULE), LEAD_SECS);
    }

    #[test]
    fn a_full_set_waits_for_a_drop_before_it_rotates() {
        let mut make = maker();
        let long = Schedule {
            rotation: 60,
            max_lifetime: 3600,
        };
        let mut step = plan(&SessionKeys::default(), 0, long, false, &mut make);
        let mut t = 0;
        for _ in 0..100 {
            if step.keys.keys.len() == MAX_KEYS {
                break;
            }
            t = step.next_change.unwrap();
            step = plan(&step.keys, t, long, false, &mut make);
        }
        let full = plan(&step.keys, t + 60, long, false, &mut make);
        assert_eq!(full.keys.keys.len(), MAX_KEYS);
        // Next: the first drop, not another key.
        let first_drop = full.keys.keys[0].retire_at.unwrap() + DROP_MARGIN_SECS;
        assert_eq!(full.next_change, Some(first_drop));
        let generated = generate(5, Some(9)).unwrap();
        assert!(usable(&generated));
        assert_ne!(generated.secret, generate(5, None).unwrap().secret);
    }
}
