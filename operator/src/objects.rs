//! Builders of the objects the operator writes, shared by both controllers, the CA store and
//! the webhook: owned or managed metadata, Secrets and ConfigMaps with string data, the JSON
//! stored in them, and reading that data back. Pure: no client, no clock.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use scopegate_crds::v1alpha1::AuthPolicy;

use crate::error::{Error, Result};
use crate::names::{CA_CONFIGMAP, CA_FILE, MANAGED_BY_LABEL, MANAGED_BY_VALUE, POLICY_LABEL};

/// Metadata for an object that `owner` owns (it goes when the owner goes): the operator's
/// label, `label` naming the owner, and the owner reference.
pub fn owned_by<K: Resource<DynamicType = ()>>(
    owner: &K,
    label: &str,
    name: &str,
) -> Result<ObjectMeta> {
    let reference = owner
        .controller_owner_ref(&())
        .ok_or(Error::Unaddressable)?;
    Ok(ObjectMeta {
        name: Some(name.to_owned()),
        namespace: owner.namespace(),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (label.to_owned(), owner.name_any()),
        ])),
        owner_references: Some(vec![reference]),
        ..ObjectMeta::default()
    })
}

/// Metadata for an object rendered for `policy` and owned by it.
pub fn owned_meta(policy: &AuthPolicy, name: &str) -> Result<ObjectMeta> {
    owned_by(policy, POLICY_LABEL, name)
}

/// Metadata for an object the operator manages that no single object owns.
pub fn managed_meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            MANAGED_BY_VALUE.to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

/// Whether labels mark an object as the operator's.
pub fn is_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
}

/// A Secret with string data.
pub fn secret(meta: ObjectMeta, type_: Option<&str>, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta,
        type_: type_.map(str::to_owned),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A ConfigMap with string data.
pub fn config_map(meta: ObjectMeta, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: meta,
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The namespace's `scopegate-ca` ConfigMap: the CA bundle client apps verify issuers with.
/// It belongs to no single policy, so it has no owner.
pub fn ca_bundle(namespace: &str, bundle: &str) -> ConfigMap {
    config_map(
        managed_meta(namespace, CA_CONFIGMAP),
        BTreeMap::from([(CA_FILE.to_owned(), bundle.to_owned())]),
    )
}

/// Serialises a document as the stable, human-readable JSON stored in objects.
pub fn to_json<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Serialize(what, e))
}

/// The UTF-8 text of one key of a Secret.
pub fn secret_data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}
