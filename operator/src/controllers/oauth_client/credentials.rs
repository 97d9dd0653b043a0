//! A client's credentials Secret: generated and rotated with an overlap (the issuer's
//! registry reads it back). The operator writes only into a Secret this OAuthClient owns.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use scopegate_crds::v1alpha1::OAuthClient;

use crate::context::{Context, FIELD_MANAGER, rfc3339};
use crate::error::{Error, Result};
use crate::names::{
    self, CLIENT_ID_KEY, CLIENT_LABEL, CLIENT_SECRET_KEY, PREVIOUS_NOT_AFTER_ANNOTATION,
    PREVIOUS_SECRET_KEY, SECRET_ROTATION_HANDLED_ANNOTATION, client_id, client_secret_name,
};
use crate::objects::{self, secret_data};

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
    let Some(name) = client_secret_name(client) else {
        return Ok(Ensured::NotGenerated);
    };
    let namespace = client.namespace().ok_or(Error::Unaddressable)?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = client.uid().ok_or(Error::Unaddressable)?;
    let asked = client
        .annotations()
        .get(names::ROTATE_SECRET_ANNOTATION)
        .cloned();

    let Some(current) = api.get_opt(&name).await? else {
        return create(client, ctx, &api, name, asked).await;
    };

    let owned = current.owner_references().iter().any(|o| o.uid == uid);
    if !owned {
        return Ok(Ensured::NotOwned { secret: name });
    }
    let handled = current
        .annotations()
        .get(SECRET_ROTATION_HANDLED_ANNOTATION)
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

    let (data, previous) = next_data(client, &current, rotate, now)?;
    if rotate
        && current_secret.is_some()
        && let Some(until) = previous
    {
        let note = format!(
            "rotated the client secret; the previous one works until {}",
            rfc3339(until)
        );
        ctx.event(client, false, "SecretRotated", note).await;
    }
    let mut meta = meta(client, &name, asked.or(handled), previous)?;
    meta.resource_version = current.resource_version();
    api.replace(&name, &post_params(), &objects::secret(meta, None, data))
        .await?;
    ctx.metrics.writes.inc();
    Ok(Ensured::Ready {
        secret: name,
        previous_until: previous,
    })
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Creates the Secret with a new client secret.
async fn create(
    client: &OAuthClient,
    ctx: &Context,
    api: &Api<Secret>,
    name: String,
    asked: Option<String>,
) -> Result<Ensured> {
    let data = BTreeMap::from([
        (CLIENT_ID_KEY.to_owned(), client_id(client)),
        (CLIENT_SECRET_KEY.to_owned(), generate_secret()?),
    ]);
    let secret = objects::secret(meta(client, &name, asked, None)?, None, data);
    api.create(&post_params(), &secret).await?;
    ctx.metrics.writes.inc();
    ctx.event(
        client,
        false,
        "SecretCreated",
        format!("generated a client secret in Secret {name}"),
    )
    .await;
    Ok(Ensured::Ready {
        secret: name,
        previous_until: None,
    })
}

/// What the Secret holds next, and until when its previous secret works: on a rotation a new
/// secret, the old one kept for the overlap; otherwise the current one, with its previous one
/// while the overlap lasts; a new one when it has none.
fn next_data(
    client: &OAuthClient,
    current: &Secret,
    rotate: bool,
    now: i64,
) -> Result<(BTreeMap<String, String>, Option<i64>)> {
    let previous_until: Option<i64> = current
        .annotations()
        .get(PREVIOUS_NOT_AFTER_ANNOTATION)
        .and_then(|v| v.parse().ok());
    let previous_expired = previous_until.is_some_and(|until| until <= now);
    let mut data = BTreeMap::from([(CLIENT_ID_KEY.to_owned(), client_id(client))]);
    let mut previous = None;
    match (secret_data(current, CLIENT_SECRET_KEY), rotate) {
        (Some(old), true) => {
            let overlap = client
                .spec
                .secret_rotation_overlap
                .get()
                .map_or(86_400, |d| i64::try_from(d.as_secs()).unwrap_or(86_400));
            data.insert(CLIENT_SECRET_KEY.to_owned(), generate_secret()?);
            data.insert(PREVIOUS_SECRET_KEY.to_owned(), old);
            previous = Some(now + overlap);
        }
        (Some(old), false) => {
            data.insert(CLIENT_SECRET_KEY.to_owned(), old);
            if let (Some(until), false) = (previous_until, previous_expired)
                && let Some(prev) = secret_data(current, PREVIOUS_SECRET_KEY)
            {
                data.insert(PREVIOUS_SECRET_KEY.to_owned(), prev);
                previous = Some(until);
            }
        }
        (None, _) => {
            data.insert(CLIENT_SECRET_KEY.to_owned(), generate_secret()?);
        }
    }
    Ok((data, previous))
}

fn meta(
    client: &OAuthClient,
    name: &str,
    handled: Option<String>,
    previous_until: Option<i64>,
) -> Result<ObjectMeta> {
    let mut annotations = BTreeMap::new();
    if let Some(value) = handled {
        annotations.insert(SECRET_ROTATION_HANDLED_ANNOTATION.to_owned(), value);
    }
    if let Some(until) = previous_until {
        annotations.insert(PREVIOUS_NOT_AFTER_ANNOTATION.to_owned(), until.to_string());
    }
    let mut meta = objects::owned_by(client, CLIENT_LABEL, name)?;
    meta.annotations = Some(annotations);
    Ok(meta)
}
