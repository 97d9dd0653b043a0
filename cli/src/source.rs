//! Where a policy comes from (a live AuthPolicy, a YAML file, a rendered sidecar config) and
//! the keys its sidecars would verify tokens with.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use scopegate_core::config::{KeySource, ScopeClaim, SidecarConfig, TrustedIssuer};
use scopegate_core::jose::jws::KeyMap;
use scopegate_core::jose::keys::{Alg, KeyEntry, load_jwks};
use scopegate_core::jwk::Jwks;
use scopegate_core::token::IssuerKeys;
use scopegate_crds::v1alpha1::AuthPolicy;
use scopegate_operator::controllers::auth_policy::render::{self, Trust};

use crate::cluster::{Cluster, policy_name};
use crate::{Global, fetch};

/// A policy to work on, as the flags name it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PolicyFlags {
    /// Read the AuthPolicy from a YAML file instead of the cluster.
    #[arg(short = 'f', long = "filename", conflicts_with = "config")]
    pub file: Option<PathBuf>,
    /// Read a rendered sidecar config document (the `config.json` of a `<policy>-sidecar`
    /// ConfigMap) instead of an AuthPolicy.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The JWKS (file or https URL) that tokens are verified with, instead of the keys the
    /// policy's config holds or names.
    #[arg(long)]
    pub jwks: Option<String>,
    /// PEM CA bundle trusted (next to the system roots) for https URLs.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// For a policy file with `issuer.policyRef`: the referenced issuer's URL (`iss`).
    #[arg(long)]
    pub issuer: Option<String>,
}

/// A policy, loaded and rendered the way its sidecars see it.
pub struct Loaded {
    /// Where it came from, for output.
    pub origin: String,
    /// The AuthPolicy, when the source is one.
    pub policy: Option<AuthPolicy>,
    /// The sidecar config document in force.
    pub config: SidecarConfig,
}

impl PolicyFlags {
    /// Whether the policy comes from a file rather than the cluster.
    pub fn offline(&self) -> bool {
        self.file.is_some() || self.config.is_some()
    }

    /// The CA bundle text, if given.
    pub fn ca_pem(&self) -> anyhow::Result<Option<String>> {
        self.ca_file
            .as_ref()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
            .transpose()
    }

    /// Loads the policy: from `--config`, from `-f` (rendered by the operator's own build),
    /// or the live AuthPolicy `name` with the config the operator rendered for it.
    pub async fn load(&self, global: &Global, name: Option<&str>) -> anyhow::Result<Loaded> {
        if let Some(path) = &self.config {
            let text = read_text(path)?;
            let config = SidecarConfig::from_json(&text)
                .with_context(|| format!("{}: not a sidecar config document", path.display()))?;
            return Ok(Loaded {
                origin: format!("sidecar config {}", path.display()),
                policy: None,
                config,
            });
        }
        if let Some(path) = &self.file {
            let mut policies = read_policies(path)?;
            let policy = match name {
                Some(name) => {
                    let index = policies
                        .iter()
                        .position(|p| policy_name(p) == name)
                        .with_context(|| {
                            format!("{}: no AuthPolicy named {name:?}", path.display())
                        })?;
                    policies.swap_remove(index)
                }
                None if policies.len() == 1 => policies.remove(0),
                None => bail!(
                    "{}: {} AuthPolicies; name one",
                    path.display(),
                    policies.len()
                ),
            };
            let config = self.render(global, &policy).await?;
            return Ok(Loaded {
                origin: format!("file {}", path.display()),
                policy: Some(policy),
                config,
            });
        }
        let Some(name) = name else {
            bail!("name a policy, or give -f FILE or --config FILE");
        };
        let cluster = crate::cluster::connect(global).await?;
        let policy = cluster.policy(name).await?;
        let (config, origin) = match cluster.rendered_config(&policy).await? {
            Some(config) => (
                config,
                format!(
                    "authpolicy {}/{name} (the config the operator rendered for its sidecars)",
                    cluster.namespace
                ),
            ),
            None => (
                self.render(global, &policy).await?,
                format!(
                    "authpolicy {}/{name} (not rendered yet: rendered here from its spec)",
                    cluster.namespace
                ),
            ),
        };
        Ok(Loaded {
            origin,
            policy: Some(policy),
            config,
        })
    }

    /// Renders a policy with the operator's own build. Keys: `--jwks` when given (a self or
    /// referenced issuer's published set); an external issuer's are fetched when needed.
    pub async fn render(
        &self,
        global: &Global,
        policy: &AuthPolicy,
    ) -> anyhow::Result<SidecarConfig> {
        let mut policy = policy.clone();
        if policy.metadata.namespace.is_none() {
            policy.metadata.namespace =
                Some(global.namespace.clone().unwrap_or_else(|| "default".into()));
        }
        let jwks = match &self.jwks {
            Some(location) => {
                let body = fetch::read(location, self.ca_pem()?.as_deref()).await?;
                serde_json::from_slice::<Jwks>(&body)
                    .with_context(|| format!("{location}: not a JWKS"))?
            }
            None => Jwks::default(),
        };
        let issuer = &policy.spec.issuer;
        let trust = if let Some(own) = &issuer.self_ {
            Trust::Own {
                jwks,
                hs256: own.signing.algorithm == scopegate_crds::v1alpha1::Algorithm::HS256,
            }
        } else if let Some(external) = &issuer.external {
            Trust::External(external.clone())
        } else {
            match &self.issuer {
                Some(url) => Trust::Referenced {
                    issuer: url.clone(),
                    jwks,
                    feed_url: String::new(),
                    // The issuer's UID is not known offline: no subject digests to match.
                    feed_subject_key: None,
                },
                None => Trust::Unresolved,
            }
        };
        render::sidecar_config(
            &policy,
            &trust,
            &render::DiscoveredKeys::new(),
            BTreeMap::new(),
            "",
        )
        .map_err(|err| anyhow::anyhow!("rendering the policy: {err}"))
    }
}

/// Reads every AuthPolicy of a YAML file (several documents allowed; other kinds skipped).
pub fn read_policies(path: &Path) -> anyhow::Result<Vec<AuthPolicy>> {
    let text = read_text(path)?;
    let mut policies = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_yaml_ng::Value::deserialize(document)
            .with_context(|| format!("{}: not YAML", path.display()))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("AuthPolicy") {
            continue;
        }
        let policy: AuthPolicy = serde_yaml_ng::from_value(value)
            .with_context(|| format!("{}: not a valid AuthPolicy", path.display()))?;
        policies.push(policy);
    }
    if policies.is_empty() {
        bail!("{}: no AuthPolicy in the file", path.display());
    }
    Ok(policies)
}

use serde::Deserialize as _;

fn read_text(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            crate::Failure::NotFound(format!("{}: no such file", path.display())).into()
        }
        _ => anyhow::Error::new(err).context(format!("reading {}", path.display())),
    })
}

/// The keys a config trusts, loaded with the functions the sidecar loads them with.
pub struct TrustedKeys {
    /// Keys by exact `iss`.
    pub issuers: HashMap<String, IssuerKeys>,
    /// What could not be loaded, and why.
    pub notes: Vec<String>,
}

/// Loads the keys of every issuer a config trusts. `jwks` (a file or https URL) replaces
/// them; otherwise rendered keys are used as they are, an external issuer's are fetched,
/// and an HS256 issuer's secrets are never read.
pub async fn trusted_keys(
    config: &SidecarConfig,
    jwks: Option<&str>,
    ca_pem: Option<&str>,
) -> TrustedKeys {
    let mut issuers = HashMap::new();
    let mut notes = Vec::new();
    for trusted in &config.verify.issuers {
        if let Some(keys) = issuer_keys(trusted, jwks, ca_pem, &mut notes).await {
            issuers.insert(trusted.issuer.clone(), keys);
        }
    }
    TrustedKeys { issuers, notes }
}

/// The keys of one trusted issuer (`None`: none could be loaded; `notes` says why).
async fn issuer_keys(
    trusted: &TrustedIssuer,
    jwks: Option<&str>,
    ca_pem: Option<&str>,
    notes: &mut Vec<String>,
) -> Option<IssuerKeys> {
    let name = &trusted.issuer;
    let (body, allowed, allow_jwt_typ) = match (&trusted.keys, jwks) {
        (
            KeySource::Remote {
                algorithms,
                allow_jwt_typ,
                jwks_uri,
                ca_bundle_pem,
                ..
            },
            given,
        ) => {
            let allowed = known_algorithms(algorithms);
            let location = given.unwrap_or(jwks_uri);
            let ca = if given.is_some() {
                ca_pem
            } else {
                ca_bundle_pem.as_deref().or(ca_pem)
            };
            let body = fetch_keys(name, location, ca, notes).await?;
            (body, Some(allowed), *allow_jwt_typ)
        }
        (
            KeySource::Discovered {
                algorithms,
                allow_jwt_typ,
                ..
            },
            Some(location),
        ) => (
            fetch_keys(name, location, ca_pem, notes).await?,
            Some(known_algorithms(algorithms)),
            *allow_jwt_typ,
        ),
        (
            KeySource::Discovered {
                jwks: rendered,
                algorithms,
                allow_jwt_typ,
                ..
            },
            None,
        ) => {
            if rendered.keys.is_empty() {
                notes.push(format!(
                    "issuer {name}: no key has been read from its discovery document yet; \
                     pass --jwks to explain with its keys"
                ));
            }
            let allowed = known_algorithms(algorithms);
            return Some(IssuerKeys {
                keys: Arc::new(static_keys(name, rendered, Some(&allowed), notes)),
                allow_jwt_typ: *allow_jwt_typ,
                scopes: scope_claim(trusted),
                audiences: own_audiences(trusted),
            });
        }
        (_, Some(location)) => (
            fetch_keys(name, location, ca_pem, notes).await?,
            None,
            false,
        ),
        (KeySource::Static { jwks }, None) => {
            return Some(IssuerKeys {
                keys: Arc::new(static_keys(name, jwks, None, notes)),
                allow_jwt_typ: false,
                scopes: None,
                audiences: own_audiences(trusted),
            });
        }
        (KeySource::OwnSigningKeys, None) => {
            notes.push(format!(
                "issuer {name} signs with HS256: its keys are secret and never read here; \
                 explain with --scopes instead of a token"
            ));
            return None;
        }
    };
    let keys = match allowed {
        Some(allowed) => match load_jwks(&body, &allowed) {
            Ok((keys, skipped)) => {
                for err in skipped {
                    notes.push(format!("issuer {name}: key left out: {err}"));
                }
                keys
            }
            Err(err) => {
                notes.push(format!("issuer {name}: not a JWKS: {err}"));
                return None;
            }
        },
        None => match serde_json::from_slice::<Jwks>(&body) {
            Ok(jwks) => static_keys(name, &jwks, None, notes),
            Err(err) => {
                notes.push(format!("issuer {name}: not a JWKS: {err}"));
                return None;
            }
        },
    };
    Some(IssuerKeys {
        keys: Arc::new(keys),
        allow_jwt_typ,
        scopes: scope_claim(trusted),
        audiences: own_audiences(trusted),
    })
}

/// An issuer's own audiences, checked instead of the policy's, as the sidecar reads them.
fn own_audiences(trusted: &TrustedIssuer) -> Option<Arc<[String]>> {
    (!trusted.audiences.is_empty()).then(|| Arc::from(trusted.audiences.clone()))
}

/// The algorithms of a key source that this build knows.
fn known_algorithms(algorithms: &[String]) -> Vec<Alg> {
    algorithms
        .iter()
        .filter_map(|a| Alg::from_name(a))
        .collect()
}

/// Where an outside issuer's tokens carry their scopes, as the sidecar reads them.
fn scope_claim(trusted: &TrustedIssuer) -> Option<Arc<ScopeClaim>> {
    match &trusted.keys {
        KeySource::Remote { scopes, .. } | KeySource::Discovered { scopes, .. } => {
            scopes.clone().map(Arc::new)
        }
        _ => None,
    }
}

/// The JWKS document at `location` (`None`: not loaded, and a note says why).
async fn fetch_keys(
    issuer: &str,
    location: &str,
    ca_pem: Option<&str>,
    notes: &mut Vec<String>,
) -> Option<Vec<u8>> {
    match fetch::read(location, ca_pem).await {
        Ok(body) => Some(body),
        Err(err) => {
            notes.push(format!(
                "issuer {issuer}: keys from {location} not loaded: {err:#}"
            ));
            None
        }
    }
}

/// Rendered keys as the sidecar loads them: each with its own `alg`, or (an outside issuer's)
/// with the algorithms `allowed`.
fn static_keys(
    issuer: &str,
    jwks: &Jwks,
    allowed: Option<&[Alg]>,
    notes: &mut Vec<String>,
) -> KeyMap {
    let mut keys = KeyMap::new();
    for jwk in &jwks.keys {
        match KeyEntry::from_jwk(jwk, allowed) {
            Ok(entry) => {
                keys.insert(entry.kid().to_owned(), entry);
            }
            Err(err) => notes.push(format!("issuer {issuer}: key left out: {err}")),
        }
    }
    keys
}

/// Loads the live policies of a namespace (or of a file) with their rendered configs.
pub async fn namespace_policies(
    global: &Global,
    flags: &PolicyFlags,
) -> anyhow::Result<Vec<Loaded>> {
    if let Some(path) = &flags.file {
        let mut out = Vec::new();
        for policy in read_policies(path)? {
            let config = flags.render(global, &policy).await?;
            out.push(Loaded {
                origin: format!("file {}", path.display()),
                policy: Some(policy),
                config,
            });
        }
        return Ok(out);
    }
    if flags.config.is_some() {
        return Ok(vec![flags.load(global, None).await?]);
    }
    let cluster: Cluster = crate::cluster::connect(global).await?;
    let api: kube::Api<AuthPolicy> =
        kube::Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut out = Vec::new();
    for policy in api.list(&Default::default()).await?.items {
        let config = match cluster.rendered_config(&policy).await? {
            Some(config) => config,
            None => flags.render(global, &policy).await?,
        };
        out.push(Loaded {
            origin: format!("authpolicy {}/{}", cluster.namespace, policy_name(&policy)),
            policy: Some(policy),
            config,
        });
    }
    Ok(out)
}
