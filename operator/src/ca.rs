//! The operator's certificate authority: a small chain of CA certificates kept in one Secret
//! in the operator's namespace, rolled over before expiry with the old and new both trusted
//! during the overlap, and the serving certificates it signs.
//!
//! Rollover follows the same publish-before-sign rule as the signing keys: a new CA joins the
//! trust bundle [`CA_PROPAGATION`] before it signs anything, so every holder of the bundle can
//! verify what it signs. Planning is pure; rcgen does the X.509 work.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

/// Lifetime of a CA certificate.
pub const CA_LIFETIME_SECS: i64 = 365 * 24 * 3600;
/// A new CA is made when the signing one has less than this left.
pub const CA_RENEW_BEFORE_SECS: i64 = 120 * 24 * 3600;
/// How long a new CA sits in the bundle before it signs.
pub const CA_PROPAGATION: i64 = 3600;
/// Lifetime of a serving certificate.
pub const LEAF_LIFETIME_SECS: i64 = 90 * 24 * 3600;
/// A serving certificate is renewed when it has less than this left.
pub const LEAF_RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;

/// File name of the CA document in the CA Secret.
pub const CA_FILE: &str = "ca.json";

/// The CA Secret's document.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaDocument {
    /// CA certificates, oldest first.
    pub authorities: Vec<Authority>,
}

impl std::fmt::Debug for CaDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaDocument")
            .field("authorities", &self.authorities.len())
            .finish()
    }
}

/// One CA certificate with its key. Times are Unix seconds.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Authority {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
    /// Start of validity.
    pub not_before: i64,
    /// End of validity.
    pub not_after: i64,
    /// When it starts signing (after it has been in the bundle for [`CA_PROPAGATION`]).
    pub signs_from: i64,
}

/// X.509 work failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused to make a key or certificate.
    #[error("making a certificate failed")]
    Certificate(#[source] rcgen::Error),
    /// No CA may sign yet (the document is empty).
    #[error("no CA can sign yet")]
    NoSigner,
}

impl CaDocument {
    /// The PEM bundle every holder must trust: every unexpired CA certificate.
    pub fn bundle(&self, now: i64) -> String {
        self.authorities
            .iter()
            .filter(|a| now < a.not_after)
            .map(|a| a.cert_pem.trim_end().to_owned() + "\n")
            .collect()
    }

    /// The CA that signs at `now`: the newest one whose signing time has come.
    pub fn signer(&self, now: i64) -> Option<&Authority> {
        self.authorities
            .iter()
            .filter(|a| a.signs_from <= now && now < a.not_after)
            .max_by_key(|a| a.signs_from)
    }

    /// Moves the document one step: drops expired CAs and makes a successor when the signer
    /// nears its end. Returns whether anything changed.
    pub fn plan(&mut self, now: i64) -> Result<bool, CaError> {
        let before = self.authorities.len();
        self.authorities.retain(|a| now < a.not_after);
        let mut changed = before != self.authorities.len();
        let newest = self.authorities.iter().map(|a| a.not_after).max();
        let needs_new = match newest {
            None => true,
            Some(end) => end - now <= CA_RENEW_BEFORE_SECS,
        };
        if needs_new {
            let signs_from = if self.authorities.is_empty() {
                now
            } else {
                now + CA_PROPAGATION
            };
            self.authorities.push(new_authority(now, signs_from)?);
            changed = true;
        }
        Ok(changed)
    }

    /// The next time [`CaDocument::plan`] would change something.
    pub fn next_transition(&self, now: i64) -> Option<i64> {
        self.authorities
            .iter()
            .flat_map(|a| {
                [
                    a.signs_from,
                    a.not_after,
                    a.not_after - CA_RENEW_BEFORE_SECS,
                ]
            })
            .filter(|t| *t > now)
            .min()
    }

    /// Issues a serving certificate for `dns_names` and `ips`, signed by the current signer.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        now: i64,
    ) -> Result<Leaf, CaError> {
        let signer = self.signer(now).ok_or(CaError::NoSigner)?;
        let ca_key = KeyPair::from_pem(&signer.key_pem).map_err(CaError::Certificate)?;
        let issuer =
            Issuer::from_ca_cert_pem(&signer.cert_pem, ca_key).map_err(CaError::Certificate)?;
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Certificate)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            dns_names
                .first()
                .cloned()
                .unwrap_or_else(|| "scopegate".into()),
        );
        params.distinguished_name = name;
        for dns in dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                dns.clone().try_into().map_err(CaError::Certificate)?,
            ));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Strict verifiers (OpenSSL's X509_STRICT, Python 3.13+) need the issuer's key id.
        params.use_authority_key_identifier_extension = true;
        let not_after = (now + LEAF_LIFETIME_SECS).min(signer.not_after);
        params.not_before = to_time(now - 300);
        params.not_after = to_time(not_after);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(CaError::Certificate)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// A serving certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// End of validity (Unix seconds).
    pub not_after: i64,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn new_authority(now: i64, signs_from: i64) -> Result<Authority, CaError> {
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Certificate)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("scopegate operator CA {now}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = to_time(now - 300);
    params.not_after = to_time(now + CA_LIFETIME_SECS);
    let cert = params.self_signed(&key).map_err(CaError::Certificate)?;
    Ok(Authority {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before: now,
        not_after: now + CA_LIFETIME_SECS,
        signs_from,
    })
}

fn to_time(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Whether a serving certificate must be (re)issued: missing, near its end, issued for other
/// names, or signed by a CA that is no longer the signer (so a rollover completes before the
/// old CA expires).
pub fn leaf_needs_renewal(
    existing: Option<&ExistingLeaf>,
    doc: &CaDocument,
    names: &[String],
    now: i64,
) -> bool {
    let Some(leaf) = existing else { return true };
    let Some(signer) = doc.signer(now) else {
        return false;
    };
    leaf.not_after - now <= LEAF_RENEW_BEFORE_SECS
        || leaf.signer != fingerprint(&signer.cert_pem)
        || leaf.dns_names != names
}

/// What the operator recorded about a serving certificate it issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingLeaf {
    /// End of validity.
    pub not_after: i64,
    /// [`fingerprint`] of the CA certificate that signed it.
    pub signer: String,
    /// The DNS names it was issued for.
    pub dns_names: Vec<String>,
}

/// SHA-256 of a PEM certificate, hex: identifies a CA in annotations.
pub fn fingerprint(pem: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ca_signs_at_once_and_successor_overlaps() {
        let mut doc = CaDocument::default();
        assert!(doc.plan(0).unwrap());
        assert_eq!(doc.signer(0).map(|a| a.signs_from), Some(0));
        assert!(!doc.plan(10).unwrap(), "nothing to do mid-life");

        let renew_at = CA_LIFETIME_SECS - CA_RENEW_BEFORE_SECS;
        assert!(doc.plan(renew_at).unwrap());
        assert_eq!(doc.authorities.len(), 2);
        // Both trusted; the old one still signs until the new one has propagated.
        assert_eq!(doc.bundle(renew_at).matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(doc.signer(renew_at).map(|a| a.not_before), Some(0));
        let new_signer = doc.signer(renew_at + CA_PROPAGATION).map(|a| a.not_before);
        assert_eq!(new_signer, Some(renew_at));

        // The old CA leaves the bundle when it expires.
        assert!(doc.plan(CA_LIFETIME_SECS).unwrap());
        assert_eq!(
            doc.bundle(CA_LIFETIME_SECS)
                .matches("BEGIN CERTIFICATE")
                .count(),
            1
        );
    }

    #[test]
    fn serving_certificate_chains_to_the_bundle_and_names_the_service() {
        let mut doc = CaDocument::default();
        doc.plan(1_700_000_000).unwrap();
        let names = vec![
            "auth.shop.svc".to_owned(),
            "auth.shop.svc.cluster.local".to_owned(),
        ];
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let leaf = doc.issue_serving(&names, &[ip], 1_700_000_000).unwrap();
        assert!(leaf.cert_pem.contains("BEGIN CERTIFICATE"));
        let der = rustls_pemfile_der(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(sans, 3);
        let ca_der = rustls_pemfile_der(&doc.bundle(1_700_000_000));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
    }

    #[test]
    fn renewal_when_near_end_or_signed_by_an_old_ca() {
        let mut doc = CaDocument::default();
        doc.plan(0).unwrap();
        let signer = fingerprint(&doc.signer(0).unwrap().cert_pem);
        let names = vec!["a".to_owned()];
        let fresh = ExistingLeaf {
            not_after: LEAF_LIFETIME_SECS,
            signer,
            dns_names: names.clone(),
        };
        assert!(!leaf_needs_renewal(Some(&fresh), &doc, &names, 0));
        assert!(leaf_needs_renewal(
            Some(&fresh),
            &doc,
            &names,
            LEAF_LIFETIME_SECS - LEAF_RENEW_BEFORE_SECS
        ));
        assert!(leaf_needs_renewal(Some(&fresh), &doc, &["b".to_owned()], 0));
        assert!(leaf_needs_renewal(None, &doc, &names, 0));
        let stale = ExistingLeaf {
            signer: "other".into(),
            ..fresh
        };
        assert!(leaf_needs_renewal(Some(&stale), &doc, &names, 0));
    }

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
