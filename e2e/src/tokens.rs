//! RFC 9068 access tokens signed with an issuer's active key, read from the signing-keys Secret
//! the operator wrote: lets tests drive verifier sidecars independently of the issuer.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use scopegate_core::keys::SigningKeys;

/// Claims of a test token.
pub struct Claims<'a> {
    /// iss.
    pub issuer: &'a str,
    /// sub.
    pub subject: &'a str,
    /// aud.
    pub audience: &'a str,
    /// scope.
    pub scope: &'a str,
    /// client_id.
    pub client_id: &'a str,
    /// Lifetime in seconds.
    pub ttl: i64,
}

/// Signs `claims` with the ES256 key that signs now.
pub fn sign(keys: &SigningKeys, claims: &Claims<'_>) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let key = keys
        .signing_key(now)
        .ok_or_else(|| anyhow::anyhow!("no key signs now"))?;
    anyhow::ensure!(key.alg == "ES256", "test tokens are ES256 only");
    let pkcs8 = STANDARD.decode(&key.private_key)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": key.kid});
    let jti = format!("{now}-{}", rand_suffix());
    let payload = serde_json::json!({
        "iss": claims.issuer, "sub": claims.subject, "aud": claims.audience,
        "exp": now + claims.ttl, "iat": now, "nbf": now, "jti": jti,
        "client_id": claims.client_id, "scope": claims.scope,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload)?)
    );
    let signature = pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}
