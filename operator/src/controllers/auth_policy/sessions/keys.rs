//! The session-key step carried out: reads Secret `<policy>-session-keys`, runs
//! [`key_plan::plan`] and writes what it decided (creating the Secret, owned by the policy,
//! when sessions are turned on; erasing its keys when they are turned off).
//!
//! The Secret is read directly and written with its resourceVersion as a precondition: a
//! racing writer makes this reconcile fail and retry instead of forking the key set. Events
//! and logs name key ids only, never a secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use scopegate_core::session::{SESSION_KEYS_FILE, SessionKeys};
use scopegate_crds::v1alpha1::{AuthPolicy, Sessions};

use super::key_plan::{self, Change, Schedule};
use crate::context::{Context, FIELD_MANAGER, rfc3339};
use crate::controllers::auth_policy::problem::Problem;
use crate::error::{Error, Result};
use crate::names::{Names, ROTATE_SESSION_KEYS_ANNOTATION, SESSION_ROTATION_HANDLED_ANNOTATION};
use crate::objects::{self, is_managed};

/// What the session-key step produced.
#[derive(Debug, Default)]
pub struct KeysOutcome {
    /// The Secret holds keys the sidecars can use (it is the operator's).
    pub usable: bool,
    /// When the keys change next.
    pub next_change: Option<i64>,
    /// Problems found.
    pub problems: Vec<Problem>,
}

/// What to write, decided from the Secret as read.
#[derive(Debug)]
pub struct Decision {
    /// The Secret to create or replace, if it changes.
    pub write: Option<Secret>,
    /// The changes, for events.
    pub changes: Vec<Change>,
    /// The stored document did not parse and was replaced.
    pub replaced_corrupt: bool,
    /// What the status hears.
    pub outcome: KeysOutcome,
}

/// Decides the session-key step for `policy` (with `sessions`) from `current`, at `now`.
/// Pure apart from `new_key`.
pub fn decide(
    policy: &AuthPolicy,
    sessions: &Sessions,
    names: &Names,
    current: Option<&Secret>,
    now: i64,
    new_key: &mut dyn FnMut(i64, Option<i64>) -> scopegate_core::session::SessionKey,
) -> Result<Decision> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    if current.is_some_and(|s| !is_managed(s.labels())) {
        let object = format!("Secret {namespace}/{}", names.session_keys);
        return Ok(Decision {
            write: None,
            changes: Vec::new(),
            replaced_corrupt: false,
            outcome: KeysOutcome {
                problems: vec![Problem::NotOwned(object)],
                ..KeysOutcome::default()
            },
        });
    }
    let stored = current.and_then(|s| s.data.as_ref()?.get(SESSION_KEYS_FILE));
    // Losing the keys only ends sessions: an unreadable document is replaced, not kept.
    let parsed = stored.map(|bytes| serde_json::from_slice::<SessionKeys>(&bytes.0));
    let replaced_corrupt = matches!(parsed, Some(Err(_)));
    let document = parsed.and_then(Result::ok).unwrap_or_default();
    let asked = policy.annotations().get(ROTATE_SESSION_KEYS_ANNOTATION);
    let handled = current.and_then(|s| s.annotations().get(SESSION_ROTATION_HANDLED_ANNOTATION));
    // A new Secret holds new keys anyway: a request standing when it is made is handled.
    let rotate_now = current.is_some() && asked.is_some() && asked != handled;
    let secs = |d: &scopegate_crds::v1alpha1::PositiveDuration| {
        d.get()
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    let schedule = Schedule {
        rotation: secs(&sessions.key_rotation).max(1),
        max_lifetime: secs(&sessions.max_lifetime),
    };
    let plan = key_plan::plan(&document, now, schedule, rotate_now, new_key);
    let owned = current.is_some_and(|s| !s.owner_references().is_empty());
    let unchanged = current.is_some()
        && !replaced_corrupt
        && plan.keys == document
        && asked.is_none_or(|a| Some(a) == handled)
        && owned;
    let write = if unchanged {
        None
    } else {
        let mut meta = objects::owned_meta(policy, &names.session_keys)?;
        meta.resource_version = current.and_then(|s| s.resource_version());
        if let Some(asked) = asked {
            meta.annotations = Some(BTreeMap::from([(
                SESSION_ROTATION_HANDLED_ANNOTATION.to_owned(),
                asked.clone(),
            )]));
        }
        Some(objects::secret(
            meta,
            None,
            BTreeMap::from([(
                SESSION_KEYS_FILE.to_owned(),
                objects::to_json("session keys", &plan.keys)?,
            )]),
        ))
    };
    Ok(Decision {
        write,
        changes: plan.changes,
        replaced_corrupt,
        outcome: KeysOutcome {
            usable: true,
            next_change: plan.next_change,
            problems: Vec::new(),
        },
    })
}

/// Moves `policy`'s session keys one step, or erases them when it has no sessions and its
/// status says it had.
pub async fn reconcile(
    policy: &AuthPolicy,
    names: &Names,
    ctx: &Context,
    now: i64,
) -> Result<KeysOutcome> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(sessions) = &policy.spec.sessions else {
        let had = (policy.status.as_ref())
            .and_then(|s| s.rendered.as_ref())
            .is_some_and(|r| r.session_keys.is_some());
        if had {
            erase(policy, names, &api).await?;
        }
        return Ok(KeysOutcome::default());
    };
    let current = api.get_opt(&names.session_keys).await?;
    // A step adds at most one key: made up front, so that the planner stays infallible.
    let fresh = key_plan::generate(now, None).map_err(|_| Error::Randomness)?;
    let decision = decide(
        policy,
        sessions,
        names,
        current.as_ref(),
        now,
        &mut |created_at, seals_from| scopegate_core::session::SessionKey {
            created_at,
            seals_from,
            ..fresh.clone()
        },
    )?;
    if let Some(secret) = decision.write {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        if current.is_none() {
            api.create(&params, &secret).await?;
        } else {
            api.replace(&names.session_keys, &params, &secret).await?;
        }
        ctx.metrics.writes.inc();
    }
    if decision.replaced_corrupt {
        let note = format!(
            "Secret {} held an unreadable session-keys document: it was replaced with a new key, which ends every session",
            names.session_keys
        );
        ctx.event(policy, true, "SessionKeysReplaced", note).await;
    }
    for change in &decision.changes {
        let (warning, reason, note) = describe(change);
        tracing::info!(policy = %policy.name_any(), namespace = %namespace, reason, "{note}");
        ctx.event(policy, warning, reason, note).await;
    }
    Ok(decision.outcome)
}

/// Erases the keys of the session-keys Secret, if it is the operator's: the Secret stays (the
/// operator deletes no Secret; it goes with the policy), the key material does not.
async fn erase(policy: &AuthPolicy, names: &Names, api: &Api<Secret>) -> Result<()> {
    let Some(mut current) = api.get_opt(&names.session_keys).await? else {
        return Ok(());
    };
    let empty = objects::to_json("session keys", &SessionKeys::default())?;
    let stored = current.data.as_ref().and_then(|d| d.get(SESSION_KEYS_FILE));
    if !is_managed(current.labels()) || stored.is_some_and(|b| b.0 == empty.as_bytes()) {
        return Ok(());
    }
    current.data = Some(BTreeMap::from([(
        SESSION_KEYS_FILE.to_owned(),
        k8s_openapi::ByteString(empty.into_bytes()),
    )]));
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.replace(&names.session_keys, &params, &current).await?;
    tracing::info!(policy = %policy.name_any(), "sessions turned off: session keys erased");
    Ok(())
}

/// The event for one change: (warning, reason, note). Ids only.
fn describe(change: &Change) -> (bool, &'static str, String) {
    match change {
        Change::Created { id, seals_from } => (
            false,
            "SessionKeyCreated",
            format!(
                "session key {id} created; it seals new cookies from {}",
                rfc3339(*seals_from)
            ),
        ),
        Change::Retiring { id, retire_at } => (
            false,
            "SessionKeyRetiring",
            format!(
                "session key {id} has a successor; it opens the cookies it sealed until {}",
                rfc3339(*retire_at)
            ),
        ),
        Change::Removed(id) => (
            false,
            "SessionKeyRemoved",
            format!("session key {id} retired and was removed"),
        ),
        Change::Discarded(id) => (
            true,
            "SessionKeyDiscarded",
            format!("session key {id} was not 32 bytes of base64url and was removed"),
        ),
        Change::Replaced(n) => (
            true,
            "SessionKeysRotated",
            format!(
                "{ROTATE_SESSION_KEYS_ANNOTATION}: {n} session keys retired at once and a new one seals; every session ends"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use base64::Engine;
    use k8s_openapi::ByteString;
    use scopegate_core::session::SessionKey;

    use super::*;

    fn policy(annotations: &str) -> AuthPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: web, namespace: shop, uid: u1, annotations: {{{annotations}}}}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  issuer: {{policyRef: {{name: auth}}}}\n  audiences: [https://web.shop.svc]\n  upstream: {{port: 8080}}\n  sessions:\n    clientRef: {{name: web}}\n    redirectUri: https://shop.example.com/.scopegate/callback\n    paths: [/**]\n"
        ))
        .unwrap()
    }

    fn step(policy: &AuthPolicy, current: Option<&Secret>, now: i64) -> Decision {
        // Ids and secrets by the time they are made.
        let mut new_key = |created_at: i64, seals_from| SessionKey {
            id: format!("n{created_at}"),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(created_at.to_be_bytes().repeat(4)),
            created_at,
            seals_from,
            retire_at: None,
        };
        let sessions = policy.spec.sessions.clone().unwrap();
        decide(
            policy,
            &sessions,
            &Names::of("web"),
            current,
            now,
            &mut new_key,
        )
        .unwrap()
    }

    /// The Secret as the API server would hand it back after `decision`'s write.
    fn stored(decision: &Decision) -> Secret {
        let mut secret = decision.write.clone().unwrap();
        secret.metadata.resource_version = Some("1".into());
        secret
    }

    fn keys_of(secret: &Secret) -> SessionKeys {
        serde_json::from_slice(&secret.data.as_ref().unwrap()[SESSION_KEYS_FILE].0).unwrap()
    }

    #[test]
    fn sessions_turned_on_create_an_owned_secret_that_a_quiet_step_leaves_alone() {
        let policy = policy("");
        let first = step(&policy, None, 1_000);
        let secret = stored(&first);
        assert_eq!(secret.metadata.name.as_deref(), Some("web-session-keys"));
        assert_eq!(secret.owner_references()[0].name, "web");
        assert!(is_managed(secret.labels()));
        assert_eq!(keys_of(&secret).keys.len(), 1);
        assert!(first.outcome.usable);
        assert_eq!(first.outcome.next_change, Some(1_000 + 24 * 3600 - 300));
        let again = step(&policy, Some(&secret), 2_000);
        assert!(again.write.is_none(), "nothing changed, nothing written");
        // Due: a key is added, written with the resourceVersion it was read at.
        let due = step(&policy, Some(&secret), 1_000 + 24 * 3600 - 300);
        let write = due.write.unwrap();
        assert_eq!(write.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(keys_of(&write).keys.len(), 2);
    }

    #[test]
    fn a_secret_not_the_operators_is_left_alone_and_a_corrupt_one_replaced() {
        let policy = policy("");
        let mut foreign = stored(&step(&policy, None, 0));
        foreign.metadata.labels = None;
        let refused = step(&policy, Some(&foreign), 10);
        assert!(refused.write.is_none());
        assert!(!refused.outcome.usable);
        assert_eq!(refused.outcome.problems[0].reason(), "ObjectNotOwned");

        let mut corrupt = stored(&step(&policy, None, 0));
        corrupt.data.as_mut().unwrap().insert(
            SESSION_KEYS_FILE.to_owned(),
            ByteString(b"{not json".to_vec()),
        );
        let replaced = step(&policy, Some(&corrupt), 10);
        assert!(replaced.replaced_corrupt);
        assert_eq!(keys_of(&replaced.write.unwrap()).keys.len(), 1);
    }

    #[test]
    fn the_rotate_annotation_replaces_the_keys_once_per_value() {
        let asked = policy("scopegate.dev/rotate-session-keys: r1");
        // A request standing when the Secret is made is handled by making it.
        let first = stored(&step(&asked, None, 0));
        assert_eq!(
            first.annotations()[SESSION_ROTATION_HANDLED_ANNOTATION],
            "r1"
        );
        assert!(step(&asked, Some(&first), 60).write.is_none());
        let again = policy("scopegate.dev/rotate-session-keys: r2");
        let rotated = step(&again, Some(&first), 60);
        assert!(rotated.changes.contains(&Change::Replaced(1)));
        let written = stored(&rotated);
        assert_eq!(
            written.annotations()[SESSION_ROTATION_HANDLED_ANNOTATION],
            "r2"
        );
        let keys = keys_of(&written);
        assert_eq!(keys.sealing_key(60).unwrap().id, "n60");
        assert_eq!(keys.keys.len(), 2);
        assert!(
            keys.opening_key(&keys.keys[0].id, 60).is_none(),
            "the old key no longer opens"
        );
        assert!(step(&again, Some(&written), 61).write.is_none());
    }
}
