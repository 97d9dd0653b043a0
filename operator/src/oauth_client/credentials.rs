//! A client's credentials Secret: generated, rotated with an overlap, and read back for the
//! issuer's registry. The operator writes only into a Secret this OAuthClient owns.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use scopegate_core::names;
use scopegate_crds::v1alpha1::OAuthClient;

use super::validate::client_id;
use crate::auth_policy::build;
use crate::context::{Context, FIELD_MANAGER};
use crate::error::{Error, Result};
use crate::registry::Credentials;
use crate::secret_data;

/// Label naming the OAuthClient a credentials Secret belongs to.
pub const CLIENT_LABEL: &str = "scopegate.dev/oauth-client";
/// Key of the client id in the credentials Secret.
pub const CLIENT_ID_KEY: &str = "client_id";
/// Key of the current secret.
pub const CLIENT_SECRET_KEY: &str = "client_secret";
/// Key of the previous secret during a rotation overlap.
pub const PREVIOUS_SECRET_KEY: &str = "previous_client_secret";
/// Annotation: Unix time the previous secret stops working.
pub const PREVIOUS_NOT_AFTER_ANNOTATION: &str = "scopegate.dev/previous-not-after";
/// Annotation: the rotate-secret request already acted on.
pub const ROTATION_HANDLED_ANNOTATION: &str = "scopegate.dev/secret-rotation-handled";

/// The Secret a confidential client's generated credentials live in.
pub fn secret_name(client: &OAuthClient) -> Option<String> {
    if client.spec.public || client.spec.existing_secret.is_some() {
        return None;
    }
    Some(
        client
            .spec
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-oauth-client", client.name_any())),
    )
}

/// What ensuring the credentials found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Nothing to generate (public client or a user's own Secret).
    NotGenerated,
    /// The Secret holds valid credentials.
    Ready {
        /// Its name.
        secret: String,
        /// When the previous secret of a rotation stops working.
        previous_until: Option<i64>,
    },
    /// A Secret of that name exists and is not this client's.
    NotOwned {
        /// Its name.
        secret: String,
    },
}

fn generate_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Randomness)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Creates, rotates or trims the generated credentials of `client`.
pub async fn ensure(client: &OAuthClient, ctx: &Context, now: i64) -> Result<Ensured> {
    let Some(name) = secret_name(client) else {
        return Ok(Ensured::NotGenerated);
    };
    let namespace = client.namespace().ok_or(Error::Unaddressable)?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = client.uid().ok_or(Error::Unaddressable)?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let asked = client
        .annotations()
        .get(names::ROTATE_SECRET_ANNOTATION)
        .cloned();

    let Some(current) = api.get_opt(&name).await? else {
        let data = BTreeMap::from([
            (CLIENT_ID_KEY.to_owned(), client_id(client)),
            (CLIENT_SECRET_KEY.to_owned(), generate_secret()?),
        ]);
        let secret = build::secret(meta(client, &name, asked, None)?, None, data);
        api.create(&params, &secret).await?;
        ctx.metrics.writes.inc();
        ctx.event(
            client,
            false,
            "SecretCreated",
            format!("generated a client secret in Secret {name}"),
        )
        .await;
        return Ok(Ensured::Ready {
            secret: name,
            previous_until: None,
        });
    };

    let owned = current.owner_references().iter().any(|o| o.uid == uid);
    if !owned {
        return Ok(Ensured::NotOwned { secret: name });
    }
    let handled = current
        .annotations()
        .get(ROTATION_HANDLED_ANNOTATION)
        .cloned();
    let current_secret = secret_data(&current, CLIENT_SECRET_KEY);
    let previous_until: Option<i64> = current
        .annotations()
        .get(PREVIOUS_NOT_AFTER_ANNOTATION)
        .and_then(|v| v.parse().ok());

    let rotate = asked.is_some() && asked != handled;
    let previous_expired = previous_until.is_some_and(|until| until <= now);
    let wrong_id =
        secret_data(&current, CLIENT_ID_KEY).as_deref() != Some(client_id(client).as_str());
    if !(rotate || previous_expired || current_secret.is_none() || wrong_id) {
        return Ok(Ensured::Ready {
            secret: name,
            previous_until,
        });
    }

    let mut data = BTreeMap::from([(CLIENT_ID_KEY.to_owned(), client_id(client))]);
    let mut previous = None;
    match (&current_secret, rotate) {
        (Some(old), true) => {
            let overlap = client
                .spec
                .secret_rotation_overlap
                .get()
                .map_or(86_400, |d| i64::try_from(d.as_secs()).unwrap_or(86_400));
            let until = now + overlap;
            data.insert(CLIENT_SECRET_KEY.to_owned(), generate_secret()?);
            data.insert(PREVIOUS_SECRET_KEY.to_owned(), old.clone());
            previous = Some(until);
            ctx.event(
                client,
                false,
                "SecretRotated",
                format!(
                    "rotated the client secret; the previous one works until {}",
                    crate::auth_policy::issuer::rfc3339(until)
                ),
            )
            .await;
        }
        (Some(old), false) => {
            data.insert(CLIENT_SECRET_KEY.to_owned(), old.clone());
            if let (Some(until), false) = (previous_until, previous_expired)
                && let Some(prev) = secret_data(&current, PREVIOUS_SECRET_KEY)
            {
                data.insert(PREVIOUS_SECRET_KEY.to_owned(), prev);
                previous = Some(until);
            }
        }
        (None, _) => {
            data.insert(CLIENT_SECRET_KEY.to_owned(), generate_secret()?);
        }
    }
    let mut meta = meta(client, &name, asked.or(handled), previous)?;
    meta.resource_version = current.resource_version();
    api.replace(&name, &params, &build::secret(meta, None, data))
        .await?;
    ctx.metrics.writes.inc();
    Ok(Ensured::Ready {
        secret: name,
        previous_until: previous,
    })
}

fn meta(
    client: &OAuthClient,
    name: &str,
    handled: Option<String>,
    previous_until: Option<i64>,
) -> Result<ObjectMeta> {
    let owner = client
        .controller_owner_ref(&())
        .ok_or(Error::Unaddressable)?;
    let mut annotations = BTreeMap::new();
    if let Some(value) = handled {
        annotations.insert(ROTATION_HANDLED_ANNOTATION.to_owned(), value);
    }
    if let Some(until) = previous_until {
        annotations.insert(PREVIOUS_NOT_AFTER_ANNOTATION.to_owned(), until.to_string());
    }
    Ok(ObjectMeta {
        name: Some(name.to_owned()),
        namespace: client.namespace(),
        labels: Some(BTreeMap::from([
            (
                names::MANAGED_BY_LABEL.to_owned(),
                names::MANAGED_BY_VALUE.to_owned(),
            ),
            (CLIENT_LABEL.to_owned(), client.name_any()),
        ])),
        annotations: Some(annotations),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

/// Reads a client's credentials for the registry: from the operator's cache for generated
/// secrets, and directly from a user's own Secret (the operator watches users' Secrets by
/// metadata only, so it never caches their data).
pub async fn read(client: &OAuthClient, ctx: &Context) -> Result<Credentials> {
    let namespace = client.namespace().ok_or(Error::Unaddressable)?;
    if client.spec.public {
        return Ok(Credentials::Public);
    }
    let source = |s: &Secret| {
        format!(
            "{}:{}",
            s.uid().unwrap_or_default(),
            s.resource_version().unwrap_or_default()
        )
    };
    if let Some(reference) = &client.spec.existing_secret {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&reference.name)
            .await?;
        return Ok(
            match secret
                .as_ref()
                .and_then(|s| Some((secret_data(s, &reference.key)?, source(s))))
            {
                Some((secret, source)) => Credentials::Chosen { secret, source },
                None => Credentials::Missing,
            },
        );
    }
    let Some(name) = secret_name(client) else {
        return Ok(Credentials::Missing);
    };
    let uid = client.uid().unwrap_or_default();
    let Some(secret) = ctx.secret(&namespace, &name) else {
        return Ok(Credentials::Missing);
    };
    if !secret.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(Credentials::Missing);
    }
    let Some(current) = secret_data(&secret, CLIENT_SECRET_KEY) else {
        return Ok(Credentials::Missing);
    };
    let previous = secret
        .annotations()
        .get(PREVIOUS_NOT_AFTER_ANNOTATION)
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|until| Some((secret_data(&secret, PREVIOUS_SECRET_KEY)?, until)));
    Ok(Credentials::Generated {
        current,
        previous,
        source: source(&secret),
    })
}
