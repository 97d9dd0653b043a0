//! The shop's clients: a service calling the issuer over TLS (trusting only the operator's CA),
//! the shop app signing a user in (a public client: code + PKCE, with a password on the login
//! app's page or through Google), and a browser (curl with a cookie jar) opening the
//! storefront's web pages, whose sidecar keeps the session.

use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use scopegate_core::session::{CALLBACK_PATH as SESSION_CALLBACK_PATH, SESSION_COOKIE};
use serde_json::Value;

use super::{STATE, Shop};
use crate::google;
use crate::http::Response;

impl Shop {
    /// Calls the issuer over TLS, trusting only the operator's CA, by its Service name.
    pub fn issuer_call(
        &self,
        method: &str,
        path: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> anyhow::Result<Response> {
        let url = format!("https://{}{path}", self.issuer_host);
        self.curl(method, &url, form, basic, false, &[])
    }

    /// A browser's request: cookies kept, the operator's CA and the Google stand-in's trusted,
    /// the issuer and the stand-in reached by name.
    fn browse(&self, method: &str, url: &str, form: &[(&str, &str)]) -> anyhow::Result<Response> {
        self.curl(method, url, form, None, true, &[])
    }

    /// The browser opens the storefront's `path` as a page (a navigation that accepts HTML),
    /// with `headers` besides.
    pub fn storefront_page(
        &self,
        method: &str,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut all = vec![("Accept", "text/html"), ("Sec-Fetch-Mode", "navigate")];
        all.extend_from_slice(headers);
        let url = format!("{}{path}", self.storefront.origin);
        self.curl(method, &url, form, None, true, &all)
    }

    /// The storefront's origin, as its own pages send it in `Origin`.
    pub fn storefront_origin(&self) -> &str {
        &self.storefront.origin
    }

    fn curl(
        &self,
        method: &str,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        browser: bool,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let host = &self.issuer_host;
        let mut command = Command::new("curl");
        command
            .args([
                "-sS",
                "-D",
                "-",
                "-o",
                "-",
                "--max-time",
                "10",
                "-X",
                method,
            ])
            // The Service's port 443 leads to the sidecar's listener, as kube-proxy's rule would.
            .arg("--connect-to")
            .arg(format!("{host}:443:{}:{}", self.auth_ip, self.auth_port));
        if browser {
            command
                .arg("--connect-to")
                .arg(format!(
                    "{}:443:{}:{}",
                    google::HOST,
                    self.google.address.ip(),
                    self.google.address.port()
                ))
                .arg("--connect-to")
                .arg(format!(
                    "{}:443:{}:{}",
                    self.storefront.host,
                    self.storefront.listener.ip(),
                    self.storefront.listener.port()
                ))
                .arg("--cacert")
                .arg(&self.browser_ca_file)
                .arg("-b")
                .arg(&self.cookie_jar)
                .arg("-c")
                .arg(&self.cookie_jar);
        } else {
            command.arg("--cacert").arg(&self.ca_file);
        }
        for (name, value) in headers {
            command.arg("-H").arg(format!("{name}: {value}"));
        }
        for (name, value) in form {
            command
                .arg("--data-urlencode")
                .arg(format!("{name}={value}"));
        }
        if let Some((user, password)) = basic {
            command
                .arg("-u")
                .arg(format!("{}:{}", form_encode(user), form_encode(password)));
        }
        command.arg(url);
        let output = command.output()?;
        ensure!(
            output.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        parse_curl(&String::from_utf8_lossy(&output.stdout))
    }

    /// A client_credentials token for the accounting client (its default scopes when `scope`
    /// is None).
    pub fn accounting_token(&self, scope: Option<&str>) -> anyhow::Result<String> {
        let (id, secret) = (&self.accounting.0, &self.accounting.1);
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(scope.map(|scope| ("scope", scope)));
        let response = self.issuer_call("POST", "/oauth2/token", &form, Some((id, secret)))?;
        ensure!(
            response.status == 200,
            "token endpoint answered {}: {}",
            response.status,
            response.body
        );
        let body: serde_json::Value = serde_json::from_str(&response.body)?;
        Ok(body["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned())
    }

    /// The flow of the public shop app: authorize, log in as `user` on the login app's page
    /// (which accepts the challenge on the mint socket), redeem the code with PKCE, asking for
    /// `scope`. Returns the token response.
    pub fn login(&self, user: &str, password: &str, scope: &str) -> anyhow::Result<Value> {
        let (verifier, query) = self.authorize_query(scope, Some("local"));
        let back = self.sign_in(&query, user, password)?;
        self.redeem(&back, &verifier)
    }

    /// The browser at the issuer: the authorization request `query` (a path on the issuer)
    /// leads to the login app's page, where `user` logs in with `password`. Returns where
    /// the issuer then sends the browser back to the client, with a code.
    fn sign_in(&self, query: &str, user: &str, password: &str) -> anyhow::Result<String> {
        let authorize = self.issuer_call("GET", query, &[], None)?;
        ensure!(
            matches!(authorize.status, 302 | 303),
            "authorize answered {}: {}",
            authorize.status,
            authorize.body
        );
        let login_url = authorize
            .header("location")
            .context("no redirect to the login page")?
            .to_owned();
        ensure!(
            login_url.starts_with(&format!("{}/login?", self.issuer)),
            "authorize sent the browser to {login_url}, not to the app's login page"
        );
        let login_challenge = login_url
            .split("login_challenge=")
            .nth(1)
            .context("no login_challenge")?
            .split('&')
            .next()
            .unwrap_or_default()
            .to_owned();
        let resume = self.submit_login(&login_challenge, user, password)?;
        let resume_path = resume
            .strip_prefix(self.issuer.as_str())
            .with_context(|| format!("the app redirected off the issuer: {resume}"))?;
        let resumed = self.issuer_call("GET", resume_path, &[], None)?;
        ensure!(
            matches!(resumed.status, 302 | 303),
            "resume answered {}: {}",
            resumed.status,
            resumed.body
        );
        Ok(resumed
            .header("location")
            .context("no redirect back to the client")?
            .to_owned())
    }

    /// Opens the app's login page for `login_challenge` and submits `user` and `password`.
    /// Returns where the app sends the browser back to the issuer, which mints the code.
    fn submit_login(
        &self,
        login_challenge: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<String> {
        let page = self.issuer_call(
            "GET",
            &format!("/login?login_challenge={login_challenge}"),
            &[],
            None,
        )?;
        ensure!(page.status == 200, "login page answered {}", page.status);
        let submitted = self.issuer_call(
            "POST",
            "/login",
            &[
                ("login_challenge", &urldecode(login_challenge)),
                ("username", user),
                ("password", password),
            ],
            None,
        )?;
        ensure!(
            submitted.status == 303,
            "login answered {}: {}",
            submitted.status,
            submitted.body
        );
        Ok(submitted
            .header("location")
            .context("no redirect to the issuer")?
            .to_owned())
    }

    /// The browser opens the storefront's `/shop/` without a session: its sidecar sends it to
    /// the issuer, where `user` logs in with `password`; the issuer sends it back to the
    /// sidecar's callback, which sets the session cookie and returns it to `/shop/`. Returns
    /// the authorization request the sidecar made, the session cookie's `Set-Cookie` with its
    /// value elided, and that value.
    pub fn storefront_sign_in(
        &self,
        user: &str,
        password: &str,
    ) -> anyhow::Result<(String, String, String)> {
        let start = self.storefront_page("GET", "/shop/", &[], &[])?;
        ensure!(
            start.status == 302,
            "/shop/ without a session answered {}: {}",
            start.status,
            start.body
        );
        let authorize = start.header("location").context("no redirect")?.to_owned();
        let query = authorize
            .strip_prefix(self.issuer.as_str())
            .filter(|q| q.starts_with("/oauth2/authorize?"))
            .with_context(|| format!("the storefront sent the browser to {authorize}"))?;
        let back = self.sign_in(query, user, password)?;
        let callback = format!("{}{SESSION_CALLBACK_PATH}?", self.storefront.origin);
        ensure!(
            back.starts_with(&callback),
            "the issuer sent the browser to {back}, not to the storefront's callback"
        );
        let landed = self.browse("GET", &back, &[])?;
        ensure!(
            matches!(landed.status, 302 | 303) && landed.header("location") == Some("/shop/"),
            "the callback answered {} to {:?}: {}",
            landed.status,
            landed.header("location"),
            landed.body
        );
        let session = (landed.headers.iter())
            .filter(|(name, _)| name == "set-cookie")
            .map(|(_, value)| value)
            .find(|value| value.starts_with(&format!("{SESSION_COOKIE}=")))
            .context("the callback set no session cookie")?;
        let (pair, attributes) = session.split_once(';').unwrap_or((session, ""));
        let value = pair
            .strip_prefix(&format!("{SESSION_COOKIE}="))
            .unwrap_or_default()
            .to_owned();
        let attributes = attributes
            .split(';')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        Ok((
            authorize,
            format!("{SESSION_COOKIE}=…; {attributes}"),
            value,
        ))
    }

    /// The value of the browser's cookie `name` for the storefront, from its cookie jar.
    pub fn storefront_cookie(&self, name: &str) -> anyhow::Result<Option<String>> {
        let jar = std::fs::read_to_string(&self.cookie_jar)?;
        // Netscape format: domain, subdomains, path, secure, expiry, name, value; HttpOnly
        // cookies carry a `#HttpOnly_` prefix on the domain.
        Ok(jar.lines().find_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let domain = fields.first()?.trim_start_matches("#HttpOnly_");
            (fields.len() == 7 && domain == self.storefront.host && fields[5] == name)
                .then(|| fields[6].to_owned())
        }))
    }

    /// A browser signs in to the shop app with Google: authorize shows the chooser, the
    /// browser follows "Continue with Google", logs in as `login` on the stand-in's own login
    /// and consent pages, comes back to the issuer's callback, passes through the app (which
    /// links the Google identity to one of its users on the mint socket) and ends at the
    /// shop app's redirect URI with a code, redeemed with PKCE. Returns the chooser's choices
    /// and the token response.
    pub fn google_login(&self, login: &str, scope: &str) -> anyhow::Result<(Vec<String>, Value)> {
        let (verifier, query) = self.authorize_query(scope, None);
        let base = self.issuer.clone();
        let chooser = self.browse("GET", &format!("{base}{query}"), &[])?;
        ensure!(
            chooser.status == 200,
            "authorize answered {} instead of the chooser: {}",
            chooser.status,
            chooser.body
        );
        let choices: Vec<String> = chooser
            .body
            .split("class=\"choice\"")
            .skip(1)
            .filter_map(|item| item.split_once('>').map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once('<').map(|(label, _)| label.to_owned()))
            .collect();
        let href = chooser
            .body
            .split("href=\"")
            .find(|h| h.starts_with("upstream/google/start?"))
            .and_then(|h| h.split('"').next())
            .context("no Google choice on the chooser page")?;
        let mut url = format!("{base}/oauth2/{}", href.replace("&amp;", "&"));
        let mut method = "GET";
        let mut form: Vec<(&str, &str)> = Vec::new();
        let login_form = [("prompt", "login"), ("login", login), ("password", "any")];
        let consent_form = [("prompt", "consent")];
        for _ in 0..16 {
            let response = self.browse(method, &url, &form)?;
            if let Some(location) = response.header("location") {
                let next = if location.starts_with("https://") || location.starts_with("http://") {
                    location.to_owned()
                } else {
                    let origin: String = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
                    format!("{origin}{location}")
                };
                if next.starts_with(&self.redirect_uri) {
                    let token = self.redeem(&next, &verifier)?;
                    return Ok((choices, token));
                }
                (url, method, form) = (next, "GET", Vec::new());
                continue;
            }
            ensure!(
                response.status == 200 && url.starts_with(&self.google.issuer),
                "{method} {url} answered {}: {}",
                response.status,
                response.body
            );
            // Google's own pages: the login form, then the consent form.
            form = if response.body.contains("name=\"login\"") {
                login_form.to_vec()
            } else {
                consent_form.to_vec()
            };
            method = "POST";
        }
        bail!("the Google login did not come back to the shop app")
    }

    /// A PKCE verifier and the shop app's authorize request for `scope`, with an
    /// `upstream=` hint when given.
    fn authorize_query(&self, scope: &str, upstream: Option<&str>) -> (String, String) {
        let mut verifier_bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut verifier_bytes).unwrap_or_default();
        let verifier = URL_SAFE_NO_PAD.encode(verifier_bytes);
        let challenge = URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
        );
        let hint = upstream
            .map(|u| format!("&upstream={u}"))
            .unwrap_or_default();
        let query = format!(
            "/oauth2/authorize?response_type=code&client_id={}&redirect_uri={}&scope={}&state={STATE}&code_challenge={challenge}&code_challenge_method=S256{hint}",
            self.app_client,
            form_encode(&self.redirect_uri),
            form_encode(scope),
        );
        (verifier, query)
    }

    /// Checks the redirect `back` to the shop app (its state, the issuer's `iss`) and
    /// redeems its code with `verifier`. Returns the token response.
    fn redeem(&self, back: &str, verifier: &str) -> anyhow::Result<Value> {
        let state = STATE;
        ensure!(
            back.starts_with(&format!("{}?", self.redirect_uri)),
            "redirected to {back}"
        );
        let params: std::collections::BTreeMap<String, String> = back
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default()
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), urldecode(v)))
            .collect();
        ensure!(
            params.get("state").map(String::as_str) == Some(state),
            "state changed: {params:?}"
        );
        ensure!(
            params.get("iss").map(String::as_str) == Some(self.issuer.as_str()),
            "iss missing or wrong: {params:?}"
        );
        let code = params.get("code").context("no code")?;
        let token = self.issuer_call(
            "POST",
            "/oauth2/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("client_id", &self.app_client),
                ("code_verifier", verifier),
            ],
            None,
        )?;
        ensure!(
            token.status == 200,
            "code redemption answered {}: {}",
            token.status,
            token.body
        );
        Ok(serde_json::from_str(&token.body)?)
    }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn urldecode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_curl(text: &str) -> anyhow::Result<Response> {
    // curl -D - prints the headers of every response (only one here), then the body.
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line from curl")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}
