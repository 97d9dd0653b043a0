//! Closed-loop load generator for the issuer's token endpoint, driven by `bench/issuer.sh`
//! (a `harness = false` bench target so that it builds with the bench profile and the
//! sidecar's dev-dependencies; `cargo bench` without a sub-command only prints the usage).
//!
//! `issuer_load setup --dir D --alg ES256 --port P` writes an issuer fixture into `D`: a CA
//! and serving certificate, one active signing key of the algorithm, a client registry with
//! one confidential client_credentials client (a generated 256-bit secret, so the keyed-hash
//! PHC scheme, authenticated with client_secret_basic), and the sidecar config document.
//!
//! `issuer_load load --dir D --target 127.0.0.1:P --secs 10 --conns 16 [--server-pid PID]
//! [--clk-tck 100]` keeps `conns` HTTP/1.1 keep-alive TLS connections busy with
//! `grant_type=client_credentials` requests for `secs` seconds, verifies the signature of
//! the first token against the fixture's public key, and prints one JSON line: tokens/s,
//! latency percentiles, errors, and (with `--server-pid`) the server's CPU seconds over the
//! measured window, read from `/proc/PID/stat`. Loopback only; bounded in time.

#![allow(clippy::unwrap_used, missing_docs)] // bench tooling: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use scopegate_core::jose::b64;
use scopegate_core::secret_hash::{SecretKind, hash};
use serde_json::{Value, json};

const CLIENT_ID: &str = "bench.backend";
const AUDIENCE: &str = "https://orders.example";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup(&Flags::parse(&args[1..])?),
        Some("load") => {
            let flags = Flags::parse(&args[1..])?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(load(flags))
        }
        _ => {
            eprintln!(
                "issuer_load: a load generator for bench/issuer.sh (sub-commands: setup, load)"
            );
            Ok(())
        }
    }
}

struct Flags {
    dir: PathBuf,
    alg: String,
    port: u16,
    target: String,
    secs: u64,
    conns: usize,
    server_pid: Option<u32>,
    clk_tck: f64,
}

impl Flags {
    fn parse(args: &[String]) -> anyhow::Result<Flags> {
        let mut flags = Flags {
            dir: PathBuf::new(),
            alg: "ES256".into(),
            port: 18443,
            target: "127.0.0.1:18443".into(),
            secs: 10,
            conns: 16,
            server_pid: None,
            clk_tck: 100.0,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
            match flag.as_str() {
                "--dir" => flags.dir = PathBuf::from(value),
                "--alg" => flags.alg = value.clone(),
                "--port" => flags.port = value.parse()?,
                "--target" => flags.target = value.clone(),
                "--secs" => flags.secs = value.parse()?,
                "--conns" => flags.conns = value.parse()?,
                "--server-pid" => flags.server_pid = Some(value.parse()?),
                "--clk-tck" => flags.clk_tck = value.parse()?,
                other => bail!("unknown flag {other}"),
            }
        }
        if flags.dir.as_os_str().is_empty() {
            bail!("--dir is required");
        }
        Ok(flags)
    }
}

/// A fresh key pair of `alg`: (PKCS#8 DER, public JWK without kid/alg).
fn key_pair(alg: &str) -> anyhow::Result<(Vec<u8>, Value)> {
    Ok(match alg {
        "ES256" => {
            let pkcs8 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?.to_pkcs8v1()?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())?;
            let point = pair.public_key().as_ref();
            (
                pkcs8.as_ref().to_vec(),
                json!({"kty": "EC", "crv": "P-256", "x": b64::encode(&point[1..33]), "y": b64::encode(&point[33..65])}),
            )
        }
        "EdDSA" => {
            let pair = Ed25519KeyPair::generate()?;
            (
                pair.to_pkcs8()?.as_ref().to_vec(),
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64::encode(pair.public_key().as_ref())}),
            )
        }
        "RS256" => {
            let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048)?;
            let der: Pkcs8V1Der = pair.as_der()?;
            let parts = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
            (
                der.as_ref().to_vec(),
                json!({"kty": "RSA", "n": b64::encode(&parts.n), "e": b64::encode(&parts.e)}),
            )
        }
        other => bail!("no bench keys for {other}"),
    })
}

fn setup(flags: &Flags) -> anyhow::Result<()> {
    let dir = &flags.dir;
    std::fs::create_dir_all(dir)?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
    };

    // Serving certificate for 127.0.0.1, signed by a CA of its own.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "scopegate bench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let mut leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    write("ca.pem", &ca.pem())?;
    write("tls.crt", &leaf.pem())?;
    write("tls.key", &leaf_key.serialize_pem())?;

    // One signing key, active since a minute ago, signing for a day.
    let now = scopegate_sidecar_kit::unix_now();
    let kid = "bench-1";
    let (private, mut jwk) = key_pair(&flags.alg)?;
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(flags.alg);
    jwk["use"] = json!("sig");
    let keys = json!({"keys": [{
        "kid": kid, "alg": flags.alg, "publishedAt": now - 60, "activatesAt": now - 60,
        "signsUntil": now + 86_400, "removedAfter": now + 90_000,
        "privateKey": STANDARD.encode(&private), "publicJwk": jwk
    }]});
    write("keys.json", &keys.to_string())?;
    write("jwk.json", &jwk.to_string())?;

    // A generated 256-bit secret, hashed as the operator hashes generated secrets.
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw)?;
    let secret = b64::encode(&raw);
    let phc = hash(&secret, SecretKind::Generated)?;
    let clients = json!({"clients": [{
        "clientId": CLIENT_ID, "public": false, "authMethod": "client_secret_basic",
        "secrets": [{"phc": phc}], "grantTypes": ["client_credentials"],
        "scopes": ["read:items", "write:items"], "defaultScopes": ["read:items"],
        "audiences": [AUDIENCE]
    }]});
    write("clients.json", &clients.to_string())?;
    write(
        "client.json",
        &json!({"clientId": CLIENT_ID, "secret": secret}).to_string(),
    )?;

    let url = format!("https://127.0.0.1:{}", flags.port);
    let config = json!({
        "apiVersion": "sidecar.scopegate.dev/v1",
        "policy": {"namespace": "bench", "name": "auth", "generation": 1},
        "listen": {"port": flags.port, "tls": {"certPath": dir.join("tls.crt"), "keyPath": dir.join("tls.key")}},
        "upstream": {"port": 9, "responseTimeoutSecs": 2},
        "verify": {"issuers": [{"issuer": url, "keys": {"type": "static", "jwks": {"keys": [jwk]}}}],
                   "audiences": [AUDIENCE], "leewaySecs": 30},
        "caBundlePem": ca.pem(),
        "issuer": {
            "url": url,
            "signingKeysPath": dir.join("keys.json"),
            "clientsPath": dir.join("clients.json"),
            "accessTokenTtlSecs": 600,
            "refreshTokenTtlSecs": 3600,
            "codeTtlSecs": 60,
            "scopes": {"read:items": "Read items", "write:items": "Write items"},
            "mintSocketPath": dir.join("mint.sock"),
            "store": {"type": "memory"}
        }
    });
    write("config.json", &config.to_string())?;
    Ok(())
}

fn connector(dir: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read(dir.join("ca.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: &str, tls: &tokio_rustls::TlsConnector) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let stream = tls.connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32, clk_tck: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat
        .rsplit_once(") ")
        .ok_or_else(|| anyhow!("odd /proc stat"))?
        .1;
    let fields: Vec<&str> = rest.split(' ').collect();
    // state is field 3 of the full line, i.e. index 0 here; utime 14 → 11, stime 15 → 12.
    let utime: f64 = fields.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: f64 = fields.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok((utime + stime) / clk_tck)
}

/// Checks the token's header algorithm and its signature against the fixture's public key.
fn check_token(token: &str, jwk: &Value) -> anyhow::Result<()> {
    let (input, sig) = token.rsplit_once('.').ok_or_else(|| anyhow!("not a JWS"))?;
    let header = input.split('.').next().unwrap_or_default();
    let header: Value = serde_json::from_slice(&b64::decode(header.as_bytes())?)?;
    if header["alg"] != jwk["alg"] || header["typ"] != "at+jwt" {
        bail!("unexpected token header {header}");
    }
    let sig = b64::decode(sig.as_bytes())?;
    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
        let text = jwk[name]
            .as_str()
            .ok_or_else(|| anyhow!("jwk without {name}"))?;
        Ok(b64::decode(text.as_bytes())?)
    };
    let ok = match jwk["alg"].as_str() {
        Some("ES256") => {
            let mut point = vec![4u8];
            point.extend(field("x")?);
            point.extend(field("y")?);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &sig)
                .is_ok()
        }
        Some("EdDSA") => UnparsedPublicKey::new(&ED25519, field("x")?)
            .verify(input.as_bytes(), &sig)
            .is_ok(),
        Some("RS256") => signature::RsaPublicKeyComponents {
            n: field("n")?,
            e: field("e")?,
        }
        .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig)
        .is_ok(),
        _ => false,
    };
    if !ok {
        bail!("the token's signature does not verify");
    }
    Ok(())
}

struct Outcome {
    latencies: Vec<Duration>,
    errors: u64,
}

async fn load(flags: Flags) -> anyhow::Result<()> {
    let client: Value = serde_json::from_slice(&std::fs::read(flags.dir.join("client.json"))?)?;
    let jwk: Value = serde_json::from_slice(&std::fs::read(flags.dir.join("jwk.json"))?)?;
    let (id, secret) = (
        client["clientId"].as_str().unwrap_or_default(),
        client["secret"].as_str().unwrap_or_default(),
    );
    let authorization = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
    let body = Bytes::from_static(b"grant_type=client_credentials");
    let tls = connector(&flags.dir)?;

    // One request first: the endpoint answers and its token verifies.
    let mut first = connect(&flags.target, &tls).await?;
    let answer = first
        .send_request(request(&authorization, body.clone())?)
        .await?;
    let status = answer.status();
    let bytes = answer.into_body().collect().await?.to_bytes();
    if status != 200 {
        bail!(
            "the token endpoint answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let reply: Value = serde_json::from_slice(&bytes)?;
    check_token(
        reply["access_token"]
            .as_str()
            .ok_or_else(|| anyhow!("no access_token"))?,
        &jwk,
    )?;

    let mut senders = vec![first];
    for _ in 1..flags.conns {
        senders.push(connect(&flags.target, &tls).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = flags
        .server_pid
        .map(|pid| cpu_secs(pid, flags.clk_tck))
        .transpose()?;
    let start = Instant::now();
    let mut workers = Vec::new();
    for mut sender in senders {
        let stop = stop.clone();
        let authorization = authorization.clone();
        let body = body.clone();
        workers.push(tokio::spawn(async move {
            let mut outcome = Outcome {
                latencies: Vec::with_capacity(100_000),
                errors: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let Ok(req) = request(&authorization, body.clone()) else {
                    outcome.errors += 1;
                    continue;
                };
                let ok = match sender.send_request(req).await {
                    Ok(answer) => {
                        let status = answer.status();
                        answer.into_body().collect().await.is_ok() && status == 200
                    }
                    Err(_) => false,
                };
                if ok {
                    outcome.latencies.push(sent.elapsed());
                } else {
                    outcome.errors += 1;
                    if sender.ready().await.is_err() {
                        break;
                    }
                }
            }
            outcome
        }));
    }
    tokio::time::sleep(Duration::from_secs(flags.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = flags
        .server_pid
        .map(|pid| cpu_secs(pid, flags.clk_tck))
        .transpose()?;
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let outcome = worker.await?;
        latencies.extend(outcome.latencies);
        errors += outcome.errors;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1e6
    };
    let tokens = latencies.len() as f64;
    let server = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => {
            let cpu = after - before;
            format!(
                ",\"server_cpu_s\":{cpu:.2},\"server_cpu_util\":{:.3},\"server_cpu_us_per_token\":{:.1}",
                cpu / elapsed,
                cpu * 1e6 / tokens.max(1.0)
            )
        }
        _ => String::new(),
    };
    println!(
        "{{\"alg\":\"{}\",\"conns\":{},\"secs\":{elapsed:.2},\"tokens\":{},\"errors\":{errors},\"tokens_per_s\":{:.0},\"p50_us\":{:.0},\"p90_us\":{:.0},\"p99_us\":{:.0},\"max_us\":{:.0}{server}}}",
        jwk["alg"].as_str().unwrap_or("?"),
        flags.conns,
        latencies.len(),
        tokens / elapsed,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}

fn request(authorization: &str, body: Bytes) -> anyhow::Result<http::Request<Full<Bytes>>> {
    Ok(http::Request::post("/oauth2/token")
        .header(http::header::HOST, "127.0.0.1")
        .header(http::header::AUTHORIZATION, authorization)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(body))?)
}
