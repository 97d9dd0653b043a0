//! Rendering an issuer's client registry from the full list of its valid OAuthClients.
//!
//! The registry is rebuilt whole on every issuer reconcile (never patched per client), so a
//! deleted or invalid client simply falls out. Hashing is the only costly part: a hash is
//! reused while the plaintext's source (the Secret's uid and resourceVersion) is unchanged
//! and its scheme is current, and recomputed otherwise — which is also how hashes under a
//! deprecated scheme get migrated, from the plaintext in the client's own Secret.

use scopegate_core::clients::{
    AuthMethod, ClientRegistry, RegisteredClient, SecretHash, TOKEN_EXCHANGE_GRANT, TokenExchange,
    service_account_subject,
};
use scopegate_core::secret_hash::{self, HashError, SecretKind};
use scopegate_crds::v1alpha1::{GrantType, OAuthClient, TokenEndpointAuthMethod};

use crate::names::client_id;
use k8s_openapi::jiff::Timestamp;

/// Where a client's secret comes from, as read from its Secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A public client: no secret.
    Public,
    /// ServiceAccount tokens of the client's namespace: no secret.
    ServiceAccounts,
    /// A secret the operator generated (and possibly the previous one, until a time).
    Generated {
        /// The current secret.
        current: String,
        /// The previous secret and the Unix time it stops working.
        previous: Option<(String, i64)>,
        /// `uid:resourceVersion` of the Secret.
        source: String,
    },
    /// A secret a person chose, in their own Secret.
    Chosen {
        /// The secret.
        secret: String,
        /// `uid:resourceVersion` of the Secret.
        source: String,
    },
    /// Not readable yet (the Secret is being created): registered without a secret.
    Missing,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Credentials::Public => "Public",
            Credentials::ServiceAccounts => "ServiceAccounts",
            Credentials::Generated { .. } => "Generated",
            Credentials::Chosen { .. } => "Chosen",
            Credentials::Missing => "Missing",
        };
        f.write_str(kind)
    }
}

/// One client that passed validation, with its credentials.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The OAuthClient.
    pub client: &'a OAuthClient,
    /// Its credentials.
    pub credentials: Credentials,
    /// Its audiences that their owners admit it to ([`crate::audiences`]).
    pub audiences: Vec<String>,
    /// The audiences its own namespace owns (what it may introspect).
    pub owned_audiences: Vec<String>,
    /// Its token exchange, as its owners let it ([`crate::audiences`]).
    pub exchange: Option<TokenExchange>,
}

/// Renders the registry. `existing` is the registry currently stored (for hash reuse).
pub fn render(
    entries: &[Entry<'_>],
    existing: &ClientRegistry,
    now: i64,
) -> Result<ClientRegistry, HashError> {
    let mut clients = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = client_id(entry.client);
        let secrets = hashed_secrets(entry, existing.find(&id), now)?;
        clients.push(registered(entry, id, secrets, now));
    }
    clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let upstream_choices = entries
        .iter()
        .filter_map(|entry| {
            let choices = entry.client.spec.upstreams.clone()?;
            Some((client_id(entry.client), choices))
        })
        .collect();
    Ok(ClientRegistry {
        clients,
        upstream_choices,
    })
}

/// A client's secrets, hashed: the generated one and, during a rotation overlap, the
/// previous one; or the one the user chose. A hash `previous` (the stored entry) already
/// holds for the same source is reused, so an unchanged secret is not hashed again.
fn hashed_secrets(
    entry: &Entry<'_>,
    previous: Option<&RegisteredClient>,
    now: i64,
) -> Result<Vec<SecretHash>, HashError> {
    let reuse = |source: &str, kind: SecretKind| -> Option<String> {
        previous?
            .secrets
            .iter()
            .find(|s| s.source.as_deref() == Some(source) && secret_hash::is_current(&s.phc, kind))
            .map(|s| s.phc.clone())
    };
    let hashed = |plain: &str,
                  source: String,
                  kind: SecretKind,
                  not_after: Option<i64>|
     -> Result<SecretHash, HashError> {
        let phc = match reuse(&source, kind) {
            Some(phc) => phc,
            None => secret_hash::hash(plain, kind)?,
        };
        Ok(SecretHash {
            phc,
            not_after,
            source: Some(source),
        })
    };
    Ok(match &entry.credentials {
        Credentials::Public | Credentials::ServiceAccounts | Credentials::Missing => Vec::new(),
        Credentials::Generated {
            current,
            previous,
            source,
        } => {
            let mut secrets = vec![hashed(
                current,
                format!("{source}#current"),
                SecretKind::Generated,
                None,
            )?];
            if let Some((old, until)) = previous
                && *until > now
            {
                secrets.push(hashed(
                    old,
                    format!("{source}#previous"),
                    SecretKind::Generated,
                    Some(*until),
                )?);
            }
            secrets
        }
        Credentials::Chosen { secret, source } => {
            vec![hashed(secret, source.clone(), SecretKind::Chosen, None)?]
        }
    })
}

/// A client's registry entry.
fn registered(
    entry: &Entry<'_>,
    id: String,
    secrets: Vec<SecretHash>,
    now: i64,
) -> RegisteredClient {
    let spec = &entry.client.spec;
    let namespace = entry
        .client
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default();
    let service_accounts: Vec<String> = (spec.service_accounts.iter())
        .map(|name| service_account_subject(namespace, name))
        .collect();
    let auth_method = match (spec.public, spec.token_endpoint_auth_method) {
        (true, _) => AuthMethod::None,
        // Whatever else the spec says (the schema refuses a method beside serviceAccounts).
        _ if !service_accounts.is_empty() => AuthMethod::ServiceAccountJwt,
        (false, Some(TokenEndpointAuthMethod::ClientSecretPost)) => AuthMethod::ClientSecretPost,
        (false, _) => AuthMethod::ClientSecretBasic,
    };
    RegisteredClient {
        client_id: id,
        public: spec.public,
        auth_method,
        secrets,
        grant_types: (spec.grant_types.iter())
            .map(|g| grant_name(*g).to_owned())
            .chain(
                entry
                    .exchange
                    .is_some()
                    .then(|| TOKEN_EXCHANGE_GRANT.to_owned()),
            )
            .collect(),
        scopes: spec.scopes.clone(),
        default_scopes: spec.default_scopes.clone(),
        audiences: entry.audiences.clone(),
        owned_audiences: entry.owned_audiences.clone(),
        redirect_uris: spec.redirect_uris.clone(),
        revoke_before: revocation_cutoff(entry.client, now).map(|c| c.effective.as_second()),
        service_accounts,
        token_exchange: entry.exchange.clone(),
    }
}

/// The RFC 6749 name of a grant type.
pub fn grant_name(grant: GrantType) -> &'static str {
    match grant {
        GrantType::ClientCredentials => "client_credentials",
        GrantType::AuthorizationCode => "authorization_code",
        GrantType::RefreshToken => "refresh_token",
    }
}

/// A client's `revokeTokensIssuedBefore`: what the spec asks and what is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    /// The spec's value.
    pub requested: Timestamp,
    /// The cut-off in force: `requested`, or when it was set if that was earlier.
    pub effective: Timestamp,
}

/// The `revokeTokensIssuedBefore` cut-off in force for `client` at `now` (Unix seconds).
/// A time in the past is in force as written, from the spec alone. CEL cannot read a clock,
/// so a time in the future is accepted at apply; taken literally it would refuse every token
/// the client gets until then, so until it comes it is clamped to the moment the operator
/// first saw it, recorded in the client's status so that later reconciles, a restarted
/// operator and the issuer's render use the same value. When the time comes it is in force
/// as written. The status record is never read for a time already past: whoever can write
/// an OAuthClient's status cannot weaken a kill switch in force.
pub fn revocation_cutoff(client: &OAuthClient, now: i64) -> Option<Cutoff> {
    let requested = whole_seconds_up(client.spec.revoke_tokens_issued_before.as_ref()?.0);
    if requested.as_second() <= now {
        return Some(Cutoff {
            requested,
            effective: requested,
        });
    }
    let recorded = client
        .status
        .as_ref()
        .and_then(|s| s.revocation_cutoff.as_ref())
        .filter(|r| r.requested.0.as_second() == requested.as_second())
        .map(|r| r.effective.0);
    let effective = recorded
        .or_else(|| Timestamp::from_second(now).ok())
        .unwrap_or(requested);
    Some(Cutoff {
        requested,
        effective: effective.min(requested),
    })
}

/// Kubernetes times are written and read in whole seconds; a cut-off with a fraction is
/// rounded up (it revokes the tokens of that second too), so a recorded value compares equal.
fn whole_seconds_up(time: Timestamp) -> Timestamp {
    let up = time.as_second() + i64::from(time.subsec_nanosecond() > 0);
    Timestamp::from_second(up).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use scopegate_crds::v1alpha1::{OAuthClientStatus, RevocationCutoff};

    fn client(name: &str, extra: &str) -> OAuthClient {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: scopegate.dev/v1alpha1\nkind: OAuthClient\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  issuerRef: {{name: auth}}\n  grantTypes: [client_credentials]\n  scopes: [read]\n{extra}"
        ))
        .unwrap()
    }

    fn generated(secret: &str, source: &str) -> Credentials {
        Credentials::Generated {
            current: secret.into(),
            previous: None,
            source: source.into(),
        }
    }

    #[test]
    fn a_cutoff_in_the_future_is_clamped_until_it_comes() {
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        let now = at("2026-06-01T12:00:00Z").as_second();
        // In the past: in force as written.
        let past = client("p", "  revokeTokensIssuedBefore: 2026-03-01T00:00:00Z\n");
        let cutoff = revocation_cutoff(&past, now).unwrap();
        assert_eq!(cutoff.effective, at("2026-03-01T00:00:00Z"));
        assert_eq!(cutoff.requested, cutoff.effective);
        // In the future: clamped to now while nothing is recorded...
        let mut future = client("f", "  revokeTokensIssuedBefore: 2030-01-01T00:00:00.5Z\n");
        let first = revocation_cutoff(&future, now).unwrap();
        assert_eq!(first.effective, at("2026-06-01T12:00:00Z"));
        // (a fraction of a second rounds up, so that the recorded value compares equal)
        assert_eq!(first.requested, at("2030-01-01T00:00:01Z"));
        // ...and to the recorded moment afterwards: later reconciles and a restarted
        // operator change nothing, even with the status written at whole seconds.
        future.status = Some(status_record(first.requested, first.effective));
        assert_eq!(revocation_cutoff(&future, now + 60), Some(first));
        // When the time comes it is in force as written.
        let then = at("2030-01-01T00:00:01Z").as_second();
        let arrived = revocation_cutoff(&future, then).unwrap();
        assert_eq!(arrived.effective, at("2030-01-01T00:00:01Z"));
        // A forged status record cannot weaken a cut-off that is in force.
        let mut forged = past.clone();
        forged.status = Some(status_record(cutoff.requested, at("1970-01-01T00:00:00Z")));
        assert_eq!(revocation_cutoff(&forged, now), Some(cutoff));
        // A new value is judged afresh.
        future.spec.revoke_tokens_issued_before = Some(Time(at("2026-05-01T00:00:00Z")));
        let changed = revocation_cutoff(&future, now + 60).unwrap();
        assert_eq!(changed.effective, at("2026-05-01T00:00:00Z"));
        assert!(revocation_cutoff(&client("d", ""), now).is_none());
        // What the issuer enforces is the clamped value.
        future.spec.revoke_tokens_issued_before = Some(Time(at("2030-01-01T00:00:00.5Z")));
        let entry = Entry {
            client: &future,
            credentials: generated("s", "u:1"),
            audiences: vec![],
            owned_audiences: vec![],
            exchange: None,
        };
        let registry = render(&[entry], &ClientRegistry::default(), now + 600).unwrap();
        assert_eq!(
            registry.clients[0].revoke_before,
            Some(first.effective.as_second())
        );
    }

    #[test]
    fn an_exchange_its_owners_let_it_have_adds_the_grant_type() {
        let exchange = TokenExchange {
            subject_audiences: vec!["https://orders.shop.svc".into()],
            audiences: vec!["https://inventory.stock.svc".into()],
            max_depth: 2,
        };
        let orders = client("orders", "");
        let entry = |exchange: Option<TokenExchange>| Entry {
            client: &orders,
            credentials: Credentials::ServiceAccounts,
            audiences: vec![],
            owned_audiences: vec![],
            exchange,
        };
        let registry = render(
            &[entry(Some(exchange.clone()))],
            &ClientRegistry::default(),
            0,
        );
        let registered = &registry.unwrap().clients[0];
        assert_eq!(registered.token_exchange.as_ref(), Some(&exchange));
        assert!(
            registered
                .grant_types
                .iter()
                .any(|g| g == TOKEN_EXCHANGE_GRANT)
        );
        // Nothing left of its tokenExchange (or none declared): not the grant either.
        let registry = render(&[entry(None)], &ClientRegistry::default(), 0).unwrap();
        assert!(
            !registry.clients[0]
                .grant_types
                .iter()
                .any(|g| g == TOKEN_EXCHANGE_GRANT)
        );
        assert_eq!(registry.clients[0].token_exchange, None);
    }

    /// The status the operator writes, as the API server returns it (whole seconds).
    fn status_record(requested: Timestamp, effective: Timestamp) -> OAuthClientStatus {
        let through_json = |t: Timestamp| -> Time {
            serde_json::from_value(serde_json::to_value(Time(t)).unwrap()).unwrap()
        };
        OAuthClientStatus {
            revocation_cutoff: Some(RevocationCutoff {
                requested: through_json(requested),
                effective: through_json(effective),
            }),
            ..OAuthClientStatus::default()
        }
    }

    #[test]
    fn registry_holds_hashes_never_plaintext_and_sorts_clients() {
        let (b, a) = (
            client("b", ""),
            client("a", "  revokeTokensIssuedBefore: 2026-01-01T00:00:00Z"),
        );
        let entries = [
            Entry {
                client: &b,
                credentials: generated("secret-b", "u:1"),
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            },
            Entry {
                client: &a,
                credentials: generated("secret-a", "u:2"),
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            },
        ];
        // Rendered in 2026-12: the cut-off (2026-01-01) is in the past.
        let registry = render(&entries, &ClientRegistry::default(), 1_796_601_600).unwrap();
        let ids: Vec<_> = registry
            .clients
            .iter()
            .map(|c| c.client_id.as_str())
            .collect();
        assert_eq!(ids, ["shop.a", "shop.b"]);
        let text = serde_json::to_string(&registry).unwrap();
        assert!(!text.contains("secret-a") && !text.contains("secret-b"));
        assert!(secret_hash::verify(&registry.clients[0].secrets[0].phc, "secret-a").unwrap());
        assert_eq!(registry.clients[0].revoke_before, Some(1_767_225_600));
        assert_eq!(
            registry.clients[0].auth_method,
            AuthMethod::ClientSecretBasic
        );
    }

    #[test]
    fn unchanged_sources_reuse_hashes_so_re_rendering_is_stable() {
        let c = client("a", "");
        let entries = [Entry {
            client: &c,
            credentials: generated("s", "u:1"),
            audiences: vec![],
            owned_audiences: vec![],
            exchange: None,
        }];
        let first = render(&entries, &ClientRegistry::default(), 0).unwrap();
        let second = render(&entries, &first, 0).unwrap();
        assert_eq!(first, second);
        let changed = [Entry {
            client: &c,
            credentials: generated("s2", "u:2"),
            audiences: vec![],
            owned_audiences: vec![],
            exchange: None,
        }];
        let third = render(&changed, &second, 0).unwrap();
        assert_ne!(
            third.clients[0].secrets[0].phc,
            second.clients[0].secrets[0].phc
        );
        assert!(secret_hash::verify(&third.clients[0].secrets[0].phc, "s2").unwrap());
    }

    #[test]
    fn deprecated_hashes_are_migrated_from_the_plaintext() {
        let c = client("a", "");
        let weak = "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
        let mut existing = render(
            &[Entry {
                client: &c,
                credentials: Credentials::Chosen {
                    secret: "pw".into(),
                    source: "u:1".into(),
                },
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            }],
            &ClientRegistry::default(),
            0,
        )
        .unwrap();
        existing.clients[0].secrets[0].phc = weak.clone();
        let migrated = render(
            &[Entry {
                client: &c,
                credentials: Credentials::Chosen {
                    secret: "pw".into(),
                    source: "u:1".into(),
                },
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            }],
            &existing,
            0,
        )
        .unwrap();
        let phc = &migrated.clients[0].secrets[0].phc;
        assert_ne!(phc, &weak);
        assert!(secret_hash::is_current(phc, SecretKind::Chosen));
        assert!(secret_hash::verify(phc, "pw").unwrap());
    }

    #[test]
    fn previous_secret_works_until_its_overlap_ends() {
        let c = client("a", "");
        let creds = Credentials::Generated {
            current: "new".into(),
            previous: Some(("old".into(), 100)),
            source: "u:3".into(),
        };
        let during = render(
            &[Entry {
                client: &c,
                credentials: creds.clone(),
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            }],
            &ClientRegistry::default(),
            50,
        )
        .unwrap();
        assert_eq!(during.clients[0].secrets.len(), 2);
        assert_eq!(during.clients[0].secrets[1].not_after, Some(100));
        let after = render(
            &[Entry {
                client: &c,
                credentials: creds,
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            }],
            &during,
            100,
        )
        .unwrap();
        assert_eq!(after.clients[0].secrets.len(), 1);
    }

    #[test]
    fn public_clients_have_no_secret_and_method_none() {
        let c = client("spa", "  public: true\n  redirectUris: [https://x/cb]");
        let registry = render(
            &[Entry {
                client: &c,
                credentials: Credentials::Public,
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            }],
            &ClientRegistry::default(),
            0,
        )
        .unwrap();
        assert!(registry.clients[0].secrets.is_empty());
        assert_eq!(registry.clients[0].auth_method, AuthMethod::None);
    }

    #[test]
    fn service_account_clients_have_no_secret_and_name_their_namespace() {
        let c = client("billing", "  serviceAccounts: [billing, batch]");
        let registry = render(
            &[Entry {
                client: &c,
                credentials: Credentials::ServiceAccounts,
                audiences: vec![],
                owned_audiences: vec![],
                exchange: None,
            }],
            &ClientRegistry::default(),
            0,
        )
        .unwrap();
        let registered = &registry.clients[0];
        assert!(registered.secrets.is_empty());
        assert!(!registered.public);
        assert_eq!(registered.auth_method, AuthMethod::ServiceAccountJwt);
        // Subjects of the client's own namespace only: a name cannot reach another one.
        assert_eq!(
            registered.service_accounts,
            [
                "system:serviceaccount:shop:billing",
                "system:serviceaccount:shop:batch"
            ]
        );
        assert_eq!(crate::names::client_secret_name(&c), None);
    }
}
