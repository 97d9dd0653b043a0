//! The operator's certificate authority: a small chain of CA certificates kept in one Secret
//! in the operator's namespace, rolled over before expiry with the old and new both trusted
//! during the overlap, and the serving certificates it signs.
//!
//! Rollover follows the same publish-before-sign rule as the signing keys: a new CA joins the
//! trust bundle [`CA_PROPAGATION`] before it signs anything, so every holder of the bundle can
//! verify what it signs. Planning is pure; rcgen does the X.509 work.
//!
//! Every CA carries critical X.509 Name Constraints ([`NameScope`]): the tenants' CA may vouch
//! only for in-cluster Service names (`.svc`, `.svc.<clusterDomain>`) and for no IP address,
//! the webhook's CA only for the webhook's own names. A leaf it signed for any other name fails
//! verification in every client that honours RFC 5280, even if the operator were tricked into
//! signing it. A CA whose constraints are not the wanted ones (one made before constraints
//! existed, or for another cluster domain) gets a successor at once and leaves the bundle once
//! the successor has signed for [`CA_PROPAGATION`].

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType,
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

/// The names a CA may vouch for, written into it as critical X.509 Name Constraints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NameScope {
    /// Permitted DNS subtrees. One with a leading dot (`.svc`) permits names below it only;
    /// one without permits that name and the names below it (RFC 5280 §4.2.1.10).
    pub dns: Vec<String>,
    /// The only IP addresses a leaf may name; none when empty (every address is excluded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

impl NameScope {
    /// The tenants' CA: in-cluster Service names only, no IP address.
    pub fn services(cluster_domain: &str) -> Self {
        NameScope {
            dns: vec![".svc".to_owned(), format!(".svc.{cluster_domain}")],
            ips: Vec::new(),
        }
    }

    /// Exactly these names and addresses (the webhook's CA).
    pub fn exactly(dns: &[String], ips: &[IpAddr]) -> Self {
        NameScope {
            dns: dns.to_vec(),
            ips: ips.to_vec(),
        }
    }

    /// Whether a leaf may carry DNS name `name` (compared without regard to case).
    pub fn permits_dns(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.dns.iter().any(|tree| {
            let tree = tree.to_ascii_lowercase();
            match tree.strip_prefix('.') {
                Some(_) => name.len() > tree.len() && name.ends_with(&tree),
                None => name == tree || name.ends_with(&format!(".{tree}")),
            }
        })
    }

    /// Whether a leaf may carry IP address `ip`.
    pub fn permits_ip(&self, ip: &IpAddr) -> bool {
        self.ips.contains(ip)
    }

    fn constraints(&self) -> NameConstraints {
        let mut permitted: Vec<GeneralSubtree> = self
            .dns
            .iter()
            .map(|d| GeneralSubtree::DnsName(d.clone()))
            .collect();
        let mut excluded = Vec::new();
        if self.ips.is_empty() {
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
        }
        permitted.extend(self.ips.iter().map(|ip| {
            GeneralSubtree::IpAddress(match ip {
                IpAddr::V4(v4) => CidrSubnet::V4(v4.octets(), [0xff; 4]),
                IpAddr::V6(v6) => CidrSubnet::V6(v6.octets(), [0xff; 16]),
            })
        }));
        NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: excluded,
        }
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
    /// The name constraints written into it; `None` for a CA made before constraints existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<NameScope>,
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
    /// A name the signing CA's constraints do not permit: it is never signed.
    #[error("{0} is outside the names this CA may certify")]
    OutsideScope(String),
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

    /// Moves the document one step towards CAs constrained to `scope`: drops expired CAs and
    /// CAs of another scope whose successor has signed for [`CA_PROPAGATION`], and makes a
    /// successor when no CA of `scope` has long to live. Returns whether anything changed.
    pub fn plan(&mut self, now: i64, scope: &NameScope) -> Result<bool, CaError> {
        let before = self.authorities.len();
        let in_scope = |a: &Authority| a.scope.as_ref() == Some(scope);
        let settled = self
            .authorities
            .iter()
            .any(|a| in_scope(a) && a.signs_from + CA_PROPAGATION <= now && now < a.not_after);
        self.authorities
            .retain(|a| now < a.not_after && (in_scope(a) || !settled));
        let mut changed = before != self.authorities.len();
        let newest = self
            .authorities
            .iter()
            .filter(|a| in_scope(a))
            .map(|a| a.not_after)
            .max();
        let needs_new = match newest {
            None => true,
            Some(end) => end - now <= CA_RENEW_BEFORE_SECS,
        };
        if needs_new {
            let signs_from = if self.signer(now).is_none() {
                now
            } else {
                now + CA_PROPAGATION
            };
            self.authorities
                .push(new_authority(now, signs_from, scope)?);
            changed = true;
        }
        Ok(changed)
    }

    /// The next time [`CaDocument::plan`] would change something.
    pub fn next_transition(&self, now: i64) -> Option<i64> {
        let mixed = self
            .authorities
            .windows(2)
            .any(|pair| pair[0].scope != pair[1].scope);
        // With CAs of two scopes, the old ones go once the newest has signed for a while.
        let settles = self
            .authorities
            .iter()
            .map(|a| a.signs_from)
            .max()
            .filter(|_| mixed)
            .map(|t| t + CA_PROPAGATION);
        self.authorities
            .iter()
            .flat_map(|a| {
                [
                    a.signs_from,
                    a.not_after,
                    a.not_after - CA_RENEW_BEFORE_SECS,
                ]
            })
            .chain(settles)
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
        if let Some(scope) = &signer.scope {
            let outside = dns_names
                .iter()
                .find(|d| !scope.permits_dns(d))
                .cloned()
                .or_else(|| {
                    ips.iter()
                        .find(|ip| !scope.permits_ip(ip))
                        .map(ToString::to_string)
                });
            if let Some(name) = outside {
                return Err(CaError::OutsideScope(name));
            }
        }
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

fn new_authority(now: i64, signs_from: i64, scope: &NameScope) -> Result<Authority, CaError> {
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Certificate)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("scopegate operator CA {now}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(scope.constraints());
    params.not_before = to_time(now - 300);
    params.not_after = to_time(now + CA_LIFETIME_SECS);
    let cert = params.self_signed(&key).map_err(CaError::Certificate)?;
    Ok(Authority {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before: now,
        not_after: now + CA_LIFETIME_SECS,
        signs_from,
        scope: Some(scope.clone()),
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

    fn tenants() -> NameScope {
        NameScope::services("cluster.local")
    }

    #[test]
    fn first_ca_signs_at_once_and_successor_overlaps() {
        let mut doc = CaDocument::default();
        assert!(doc.plan(0, &tenants()).unwrap());
        assert_eq!(doc.signer(0).map(|a| a.signs_from), Some(0));
        assert!(!doc.plan(10, &tenants()).unwrap(), "nothing to do mid-life");

        let renew_at = CA_LIFETIME_SECS - CA_RENEW_BEFORE_SECS;
        assert!(doc.plan(renew_at, &tenants()).unwrap());
        assert_eq!(doc.authorities.len(), 2);
        // Both trusted; the old one still signs until the new one has propagated.
        assert_eq!(doc.bundle(renew_at).matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(doc.signer(renew_at).map(|a| a.not_before), Some(0));
        let new_signer = doc.signer(renew_at + CA_PROPAGATION).map(|a| a.not_before);
        assert_eq!(new_signer, Some(renew_at));

        // The old CA leaves the bundle when it expires.
        assert!(doc.plan(CA_LIFETIME_SECS, &tenants()).unwrap());
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
        doc.plan(1_700_000_000, &tenants()).unwrap();
        let names = vec![
            "auth.shop.svc".to_owned(),
            "auth.shop.svc.cluster.local".to_owned(),
        ];
        let leaf = doc.issue_serving(&names, &[], 1_700_000_000).unwrap();
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
        assert_eq!(sans, 2);
        let ca_der = rustls_pemfile_der(&doc.bundle(1_700_000_000));
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();
    }

    #[test]
    fn renewal_when_near_end_or_signed_by_an_old_ca() {
        let mut doc = CaDocument::default();
        doc.plan(0, &tenants()).unwrap();
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

    #[test]
    fn scope_matching_follows_rfc_5280() {
        let scope = tenants();
        for inside in [
            "auth.shop.svc",
            "AUTH.shop.SVC",
            "auth.shop.svc.cluster.local",
        ] {
            assert!(scope.permits_dns(inside), "{inside}");
        }
        for outside in [
            "svc",
            "svc.cluster.local",
            "accounts.google.com",
            "auth.shop.svc.cluster.local.evil.example",
            "auth.shop.svcx",
            "auth.shop.svc.cluster.localx",
            "xsvc",
        ] {
            assert!(!scope.permits_dns(outside), "{outside}");
        }
        assert!(!scope.permits_ip(&"127.0.0.1".parse().unwrap()));
        let webhook = NameScope::exactly(
            &["scopegate-webhook.scopegate-system.svc".to_owned()],
            &["127.0.0.1".parse().unwrap()],
        );
        assert!(webhook.permits_dns("scopegate-webhook.scopegate-system.svc"));
        assert!(!webhook.permits_dns("auth.shop.svc"));
        assert!(webhook.permits_ip(&"127.0.0.1".parse().unwrap()));
        assert!(!webhook.permits_ip(&"127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn the_operator_refuses_to_sign_outside_the_scope() {
        let mut doc = CaDocument::default();
        doc.plan(0, &tenants()).unwrap();
        for (dns, ips) in [
            (vec!["accounts.google.com".to_owned()], vec![]),
            (
                vec!["auth.shop.svc".to_owned(), "api.github.com".to_owned()],
                vec![],
            ),
            (
                vec!["auth.shop.svc".to_owned()],
                vec!["127.0.0.1".parse().unwrap()],
            ),
        ] {
            assert!(matches!(
                doc.issue_serving(&dns, &ips, 0),
                Err(CaError::OutsideScope(_))
            ));
        }
    }

    #[test]
    fn name_constraints_are_critical_and_survive_rollover() {
        let mut doc = CaDocument::default();
        doc.plan(0, &tenants()).unwrap();
        let renew_at = CA_LIFETIME_SECS - CA_RENEW_BEFORE_SECS;
        doc.plan(renew_at, &tenants()).unwrap();
        assert_eq!(doc.authorities.len(), 2);
        for authority in &doc.authorities {
            let der = rustls_pemfile_der(&authority.cert_pem);
            let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
            let extension = ca
                .extensions()
                .iter()
                .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_NAME_CONSTRAINTS)
                .expect("name constraints");
            assert!(extension.critical);
            let x509_parser::extensions::ParsedExtension::NameConstraints(nc) =
                extension.parsed_extension()
            else {
                panic!("unparsed name constraints");
            };
            let permitted: Vec<String> = nc
                .permitted_subtrees
                .iter()
                .flatten()
                .map(|s| s.base.to_string())
                .collect();
            assert_eq!(permitted, ["DNSName(.svc)", "DNSName(.svc.cluster.local)"]);
            assert_eq!(nc.excluded_subtrees.as_ref().map(Vec::len), Some(2));
        }
    }

    #[test]
    fn an_unconstrained_ca_is_replaced_and_leaves_the_bundle() {
        let mut doc = CaDocument::default();
        doc.plan(0, &tenants()).unwrap();
        doc.authorities[0].scope = None; // as made before constraints existed
        let legacy = fingerprint(&doc.authorities[0].cert_pem);
        let t = 1000;
        assert!(doc.plan(t, &tenants()).unwrap());
        assert_eq!(doc.authorities.len(), 2);
        // Publish before sign: the legacy CA signs until its successor has propagated.
        assert_eq!(
            doc.signer(t).map(|a| fingerprint(&a.cert_pem)),
            Some(legacy.clone())
        );
        let takes_over = t + CA_PROPAGATION;
        assert_eq!(doc.next_transition(t), Some(takes_over));
        assert_ne!(
            doc.signer(takes_over).map(|a| fingerprint(&a.cert_pem)),
            Some(legacy.clone())
        );
        assert!(!doc.plan(takes_over, &tenants()).unwrap());
        // Leaves are re-issued by the new signer; one propagation later the legacy CA goes.
        let drops = takes_over + CA_PROPAGATION;
        assert_eq!(doc.next_transition(takes_over), Some(drops));
        assert!(doc.plan(drops, &tenants()).unwrap());
        assert_eq!(doc.authorities.len(), 1);
        assert_eq!(doc.bundle(drops).matches("BEGIN CERTIFICATE").count(), 1);
        // Another cluster domain is another scope: the same replacement.
        assert!(
            doc.plan(drops, &NameScope::services("corp.example"))
                .unwrap()
        );
        assert_eq!(doc.authorities.len(), 2);
    }

    /// A realistic time (webpki refuses certificates from before 1970).
    const NOW: i64 = 1_700_000_000;

    /// A leaf signed by the CA's key for any name, as if the operator had been tricked.
    fn forged_leaf(doc: &CaDocument, dns: &[&str], ips: &[&str]) -> String {
        let signer = doc.signer(NOW).unwrap();
        let ca_key = KeyPair::from_pem(&signer.key_pem).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&signer.cert_pem, ca_key).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = dns
            .iter()
            .map(|d| SanType::DnsName((*d).try_into().unwrap()))
            .chain(ips.iter().map(|ip| SanType::IpAddress(ip.parse().unwrap())))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_time(NOW - 300);
        params.not_after = to_time(NOW + LEAF_LIFETIME_SECS);
        params.signed_by(&key, &issuer).unwrap().pem()
    }

    fn webpki_accepts(doc: &CaDocument, leaf_pem: &str, name: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pemfile_der(&doc.bundle(0)).into())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = rustls::pki_types::CertificateDer::from(rustls_pemfile_der(leaf_pem));
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let now = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (NOW + 60).unsigned_abs(),
        ));
        verifier
            .verify_server_cert(&leaf, &[], &server, &[], now)
            .is_ok()
    }

    /// `openssl verify -verify_hostname` (or `-verify_ip`) as an independent verifier.
    fn openssl_accepts(doc: &CaDocument, leaf_pem: &str, flag: &str, name: &str) -> bool {
        let dir = std::env::temp_dir().join(format!(
            "scopegate-nc-{}-{}",
            std::process::id(),
            fingerprint(leaf_pem)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), doc.bundle(NOW)).unwrap();
        std::fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
        let output = std::process::Command::new("openssl")
            .args(["verify", "-attime", &(NOW + 60).to_string(), "-CAfile"])
            .arg(dir.join("ca.pem"))
            .args([flag, name])
            .arg(dir.join("leaf.pem"))
            .output()
            .expect("openssl is installed by scripts/setup.sh");
        std::fs::remove_dir_all(&dir).unwrap();
        output.status.success()
    }

    #[test]
    fn independent_verifiers_refuse_a_forged_leaf_outside_the_subtrees() {
        let mut doc = CaDocument::default();
        doc.plan(NOW, &tenants()).unwrap();
        let good = forged_leaf(&doc, &["auth.shop.svc", "auth.shop.svc.cluster.local"], &[]);
        assert!(webpki_accepts(&doc, &good, "auth.shop.svc"));
        assert!(openssl_accepts(
            &doc,
            &good,
            "-verify_hostname",
            "auth.shop.svc.cluster.local"
        ));
        for name in ["accounts.google.com", "api.github.com", "svc.cluster.local"] {
            let forged = forged_leaf(&doc, &[name], &[]);
            assert!(!webpki_accepts(&doc, &forged, name), "webpki took {name}");
            assert!(
                !openssl_accepts(&doc, &forged, "-verify_hostname", name),
                "openssl took {name}"
            );
        }
        // A permitted name does not carry a forbidden one through.
        let mixed = forged_leaf(&doc, &["auth.shop.svc", "accounts.google.com"], &[]);
        assert!(!webpki_accepts(&doc, &mixed, "accounts.google.com"));
        assert!(!openssl_accepts(
            &doc,
            &mixed,
            "-verify_hostname",
            "auth.shop.svc"
        ));
        // No IP address at all.
        let ip = forged_leaf(&doc, &["auth.shop.svc"], &["10.0.0.1"]);
        assert!(!openssl_accepts(&doc, &ip, "-verify_ip", "10.0.0.1"));
        assert!(!webpki_accepts(&doc, &ip, "10.0.0.1"));
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
