//! The built `scopegate-sidecar` binary as a real process in front of a small app on
//! loopback: config refusal (exit 64), hot reload through a kubelet-style symlink swap with
//! a broken file in between, and the drain on SIGTERM.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_scopegate-sidecar");

fn command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .args(["--bind", "127.0.0.1", "--admin-addr", "127.0.0.1:0"])
        .args(["--reload-interval-ms", "50", "--drain-secs", "10"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Starts the binary and reads the ports from its one stdout line.
async fn spawn(config: &Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = command(config)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("sidecar prints its ports")
        .unwrap()
        .expect("a line on stdout");
    let addr = |key: &str| -> SocketAddr {
        line.split(' ')
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {line:?}"))
            .parse()
            .unwrap()
    };
    (child, addr("proxy="), addr("admin="))
}

/// Lays out a directory the way kubelet mounts a ConfigMap: `config.json` is a symlink to
/// `..data/config.json`, and `..data` a symlink to a timestamped directory.
struct ConfigMapDir {
    dir: TempDir,
    version: usize,
}

impl ConfigMapDir {
    fn new(text: &str) -> ConfigMapDir {
        let dir = TempDir::new();
        let mut me = ConfigMapDir { dir, version: 0 };
        me.publish(text);
        std::os::unix::fs::symlink("..data/config.json", me.path()).unwrap();
        me
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.join("config.json")
    }

    /// Publishes new content by an atomic swap of `..data`.
    fn publish(&mut self, text: &str) {
        self.version += 1;
        let version_dir = self.dir.join(&format!("..v{}", self.version));
        std::fs::create_dir(&version_dir).unwrap();
        std::fs::write(version_dir.join("config.json"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{}", self.version), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

async fn admin_text(admin: SocketAddr, path: &str) -> (u16, String) {
    let r = get(admin, path, &[]).await;
    (r.status, String::from_utf8(r.body).unwrap())
}

#[tokio::test]
async fn refused_configs_exit_64_with_a_clear_message_and_bind_nothing() {
    let upstream_port = 1;
    let dir = TempDir::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let valid = config(upstream_port, json!({"keys": []}));
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing file", String::new(), "cannot read config file"),
        (
            "not JSON",
            "{".into(),
            "not a valid sidecar config document",
        ),
        (
            "another version",
            {
                let mut c = valid.clone();
                c["apiVersion"] = json!("sidecar.scopegate.dev/v3");
                c.to_string()
            },
            "apiVersion",
        ),
        (
            "bad path pattern",
            {
                let mut c = valid.clone();
                c["rules"][0]["paths"] = json!(["/items/../admin"]);
                c.to_string()
            },
            "path pattern",
        ),
        (
            "secret in a wrongly typed field",
            {
                let mut c = valid.clone();
                c["listen"]["port"] = json!("hunter2-secret");
                c.to_string()
            },
            "line 1",
        ),
        (
            "static key without alg",
            {
                let mut c = valid.clone();
                let (key, _) = SigningKey::es256();
                c["verify"]["issuers"][0]["keys"]["jwks"] = json!({"keys": [key.jwk("k1", None)]});
                c.to_string()
            },
            "algorithm missing",
        ),
        (
            "http JWKS",
            {
                let mut c = valid.clone();
                c["verify"]["issuers"][0]["keys"] = json!({
                    "type": "remote", "jwksUri": "http://idp.example/jwks", "algorithms": ["RS256"],
                    "refreshIntervalSecs": 60
                });
                c.to_string()
            },
            "a jwksUri https",
        ),
    ];
    for (name, text, message) in cases {
        let path = dir.join(&format!("{}.json", name.replace(' ', "-")));
        if !text.is_empty() {
            std::fs::write(&path, text).unwrap();
        }
        // A sidecar that takes the document runs on: the case fails instead of hanging.
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            command(&path).args(["--port", &port.to_string()]).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: the sidecar took the config and kept running"))
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{name}: {stderr}");
        assert!(
            stderr.contains(message),
            "{name}: {message:?} not in {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "{name}: config content echoed: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{name}: it announced listening");
    }
    // The port it was told to use was never taken.
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[tokio::test]
async fn hot_reload_swaps_configs_and_keeps_the_last_good_one() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let base = config(upstream.addr.port(), json!({"keys": []}));
    let mut mount = ConfigMapDir::new(&base.to_string());
    let (mut child, proxy, admin) = spawn(&mount.path()).await;

    assert_eq!(get(proxy, "/public/a", &[]).await.status, 200);
    assert_eq!(get(proxy, "/extra/a", &[]).await.status, 401);

    // A broken file: refused, said so, and the last good config keeps serving.
    mount.publish("{\"apiVersion\": \"sidecar.scopegate.dev/v1\", \"policy\": 1}");
    let detail = eventually(
        "the refusal in /readyz",
        Duration::from_secs(20),
        || async {
            let (status, text) = admin_text(admin, "/readyz").await;
            (status == 200 && text.contains("the newest file is refused")).then_some(text)
        },
    )
    .await;
    assert!(detail.contains("generation 1"), "{detail}");
    let (_, metrics) = admin_text(admin, "/metrics").await;
    assert!(
        metrics.contains("scopegate_sidecar_config_reload_failing 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scopegate_sidecar_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert_eq!(get(proxy, "/public/a", &[]).await.status, 200);

    // A good file again: generation 2 with a new public route, on the same connection pool.
    let mut next = base.clone();
    next["policy"]["generation"] = json!(2);
    next["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"paths": ["/extra/**"], "action": {"type": "public"}}));
    mount.publish(&next.to_string());
    eventually("generation 2 in force", Duration::from_secs(20), || async {
        (get(proxy, "/extra/a", &[]).await.status == 200).then_some(())
    })
    .await;
    let (_, metrics) = admin_text(admin, "/metrics").await;
    assert!(
        metrics.contains("scopegate_sidecar_config_generation 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scopegate_sidecar_config_reload_failing 0"),
        "{metrics}"
    );
    let (_, detail) = admin_text(admin, "/readyz").await;
    assert!(!detail.contains("refused"), "{detail}");
    child.start_kill().unwrap();
}

#[tokio::test]
async fn a_key_that_does_not_load_is_left_out_with_a_metric_and_the_others_serve() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (good, _) = SigningKey::es256();
    let (other, _) = SigningKey::es256();
    // Valid JSON, garbage key material: a point that is not on the curve.
    let mut garbage = other.jwk("garbage", Some("ES256"));
    garbage.y = garbage.x.clone();
    let jwks = json!({"keys": [garbage, good.jwk("good", Some("ES256"))]});
    let mut mount = ConfigMapDir::new(&config(upstream.addr.port(), jwks).to_string());
    let (mut child, proxy, admin) = spawn(&mount.path()).await;

    let bearer = |key: &SigningKey, kid: &str| {
        format!(
            "Bearer {}",
            mint(key, &header("ES256", kid), &claims("read:items"))
        )
    };
    let valid = bearer(&good, "good");
    assert_eq!(
        get(proxy, "/items/1", &[("authorization", &valid)])
            .await
            .status,
        200,
        "the good key serves"
    );
    let forged = bearer(&other, "garbage");
    assert_eq!(
        get(proxy, "/items/1", &[("authorization", &forged)])
            .await
            .status,
        401,
        "the left-out key verifies nothing"
    );
    let (_, metrics) = admin_text(admin, "/metrics").await;
    assert!(
        metrics.contains("scopegate_sidecar_keys_skipped 1"),
        "{metrics}"
    );
    let (status, detail) = admin_text(admin, "/readyz").await;
    assert_eq!(status, 200, "{detail}");
    assert!(
        detail.contains("key \"garbage\" left out") && detail.contains("malformed key material"),
        "{detail}"
    );

    // A key set in which no key loads is not taken for an empty one: refused, the last good
    // config keeps serving.
    let mut broken = config(upstream.addr.port(), json!({"keys": []}));
    broken["policy"]["generation"] = json!(2);
    let mut bad_only = other.jwk("garbage", Some("ES256"));
    bad_only.y = bad_only.x.clone();
    broken["verify"]["issuers"][0]["keys"]["jwks"] = json!({"keys": [bad_only]});
    mount.publish(&broken.to_string());
    eventually(
        "the all-bad key set refused",
        Duration::from_secs(20),
        || async {
            let (_, text) = admin_text(admin, "/readyz").await;
            text.contains("the newest file is refused").then_some(())
        },
    )
    .await;
    assert_eq!(
        get(proxy, "/items/1", &[("authorization", &valid)])
            .await
            .status,
        200
    );

    // A good set again: nothing skipped.
    let mut fixed = config(
        upstream.addr.port(),
        json!({"keys": [good.jwk("good", Some("ES256"))]}),
    );
    fixed["policy"]["generation"] = json!(3);
    mount.publish(&fixed.to_string());
    eventually("generation 3 in force", Duration::from_secs(20), || async {
        let (_, metrics) = admin_text(admin, "/metrics").await;
        (metrics.contains("scopegate_sidecar_config_generation 3")
            && metrics.contains("scopegate_sidecar_keys_skipped 0"))
        .then_some(())
    })
    .await;
    child.start_kill().unwrap();
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let upstream = Upstream::start(Duration::from_millis(1500)).await;
    let dir = TempDir::new();
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        config(upstream.addr.port(), json!({"keys": []})).to_string(),
    )
    .unwrap();
    let (mut child, proxy, _admin) = spawn(&path).await;

    let in_flight = tokio::spawn(async move { get(proxy, "/slow", &[]).await });
    eventually(
        "the app to receive the request",
        Duration::from_secs(20),
        || async { (upstream.hits() == 1).then_some(()) },
    )
    .await;
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    eventually(
        "new connections to be refused",
        Duration::from_secs(20),
        || async {
            tokio::net::TcpStream::connect(proxy)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200, "the in-flight request was cut");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn logs_never_contain_tokens() {
    let upstream = Upstream::start(Duration::from_secs(0)).await;
    let (key, _) = SigningKey::es256();
    let dir = TempDir::new();
    let path = dir.join("config.json");
    let cfg = config(
        upstream.addr.port(),
        json!({"keys": [key.jwk("k1", Some("ES256"))]}),
    );
    std::fs::write(&path, cfg.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let mut child = command(&path)
        .args(["--port", "0"])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let proxy: SocketAddr = line
        .split(' ')
        .find_map(|w| w.strip_prefix("proxy="))
        .unwrap()
        .parse()
        .unwrap();
    let mut claims = claims("read:items");
    claims["aud"] = json!("somebody-else");
    let tokens = [
        mint(&key, &header("ES256", "k1"), &claims),
        mint(&key, &header("ES256", "k1"), &support::claims("read:items")),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ".to_owned(),
    ];
    for token in &tokens {
        get_with_token(proxy, "/items/1", token).await;
    }
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(
        text.contains("invalid token"),
        "the refusal is logged: {text}"
    );
    for token in &tokens {
        for part in token.split('.') {
            assert!(!text.contains(part), "a token segment reached the log");
        }
    }
}
