//! An issuer's serving certificate, issued from the operator's CA for its Service and renewed
//! before it expires or when the CA rolls over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use scopegate_crds::v1alpha1::{AuthPolicy, SelfIssuer};

use crate::context::{Context, rfc3339};
use crate::controllers::auth_policy::problem::Problem;
use crate::error::{Error, Result};
use crate::names::{
    self, CA_FILE, Names, TLS_NAMES_ANNOTATION, TLS_NOT_AFTER_ANNOTATION, TLS_SIGNER_ANNOTATION,
};
use crate::objects::{self, secret_data};
use crate::pki::ca::{self, CaDocument, ExistingLeaf};

/// Issues or renews the serving certificate; returns when it is next due, or the problem that
/// stops it. The names come only from the Service's label and the policy's own namespace, and
/// a label that is not one (an object stored before the schema checked it) is refused here
/// again, before anything is signed.
pub async fn reconcile_tls(
    policy: &AuthPolicy,
    own: &SelfIssuer,
    names: &Names,
    ca: &CaDocument,
    ctx: &Context,
    now: i64,
) -> Result<Result<i64, Problem>> {
    let namespace = policy.namespace().ok_or(Error::Unaddressable)?;
    let Some(dns_names) =
        names::service_dns_names(&own.service.name, &namespace, &ctx.cluster_domain)
    else {
        return Ok(Err(Problem::InvalidServiceName(own.service.name.clone())));
    };
    let bundle = ca.bundle(now);
    let cached = ctx.secret(&namespace, &names.tls);
    let existing = cached.as_ref().and_then(|s| {
        let annotations = s.annotations();
        Some(ExistingLeaf {
            not_after: annotations.get(TLS_NOT_AFTER_ANNOTATION)?.parse().ok()?,
            signer: annotations.get(TLS_SIGNER_ANNOTATION)?.clone(),
            dns_names: annotations
                .get(TLS_NAMES_ANNOTATION)?
                .split(',')
                .map(str::to_owned)
                .collect(),
        })
    });
    let renew = ca::leaf_needs_renewal(existing.as_ref(), ca, &dns_names, now);
    let (cert, key, not_after, signer) = match (&cached, &existing, renew) {
        (Some(secret), Some(leaf), false) => (
            secret_data(secret, "tls.crt").unwrap_or_default(),
            secret_data(secret, "tls.key").unwrap_or_default(),
            leaf.not_after,
            leaf.signer.clone(),
        ),
        _ => {
            let leaf = ca.issue_serving(&dns_names, &[], now)?;
            let signer = ca
                .signer(now)
                .map(|a| ca::fingerprint(&a.cert_pem))
                .unwrap_or_default();
            ctx.event(
                policy,
                false,
                "CertificateIssued",
                format!(
                    "issued a serving certificate for {} until {}",
                    dns_names.join(", "),
                    rfc3339(leaf.not_after)
                ),
            )
            .await;
            (leaf.cert_pem, leaf.key_pem, leaf.not_after, signer)
        }
    };
    let mut meta = objects::owned_meta(policy, &names.tls)?;
    meta.annotations = Some(BTreeMap::from([
        (TLS_NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
        (TLS_SIGNER_ANNOTATION.to_owned(), signer),
        (TLS_NAMES_ANNOTATION.to_owned(), dns_names.join(",")),
    ]));
    let desired = objects::secret(
        meta,
        Some("kubernetes.io/tls"),
        BTreeMap::from([
            ("tls.crt".to_owned(), cert),
            ("tls.key".to_owned(), key),
            (CA_FILE.to_owned(), bundle),
        ]),
    );
    let unchanged = cached
        .as_ref()
        .is_some_and(|s| s.data == desired.data && s.annotations() == desired.annotations());
    ctx.apply::<Secret>(&desired, unchanged).await?;
    Ok(Ok(not_after - ca::LEAF_RENEW_BEFORE_SECS))
}
