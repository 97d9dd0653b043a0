//! The GitHub leg (OAuth2 and the REST API; GitHub issues no ID token).
//!
//! The subject is the numeric user id, never the login (a renamed login can be claimed by
//! someone else). The email is the primary address of `/user/emails`, verified only when
//! GitHub says so; the public profile email is never used. A token endpoint that answers 200
//! with an `error` member has refused the code. Organisation and team rules use
//! `/orgs/{org}/members/{login}` (204 for a member) and `/user/teams`.

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Full, Limited};
use scopegate_core::upstream::{GithubOrg, GithubUpstream, UpstreamIdentity, UpstreamIdp};
use serde_json::Value;

use super::{MAX_BODY, ProviderClient, ProviderError, REQUEST_TIMEOUT};
use crate::form::form_encode;

/// Most pages read from one paginated list.
pub const MAX_PAGES: usize = 10;
/// The REST API version asked for.
const API_VERSION: &str = "2022-11-28";

/// The web base (authorize and token endpoints) and the API base of a GitHub upstream.
pub fn bases(github: &GithubUpstream) -> (String, String) {
    if github.host_name.is_empty() {
        ("https://github.com".into(), "https://api.github.com".into())
    } else {
        let web = format!("https://{}", github.host_name);
        let api = format!("{web}/api/v3");
        (web, api)
    }
}

/// The scopes asked for: the profile and emails, and org membership when orgs are checked.
pub fn scopes(github: &GithubUpstream) -> String {
    if github.orgs.is_empty() {
        "read:user user:email".into()
    } else {
        "read:user user:email read:org".into()
    }
}

/// How a GitHub login failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GithubError {
    /// The provider could not be reached, or answered something unusable.
    Provider(ProviderError),
    /// The token endpoint refused the code (GitHub answers 200 with an `error` member).
    Refused,
    /// The user belongs to none of the configured organisations (or teams).
    DeniedOrg,
}

impl From<ProviderError> for GithubError {
    fn from(err: ProviderError) -> Self {
        GithubError::Provider(err)
    }
}

/// One answer: status, the `Link: rel="next"` URL, the body.
async fn fetch(
    client: &ProviderClient,
    request: http::Request<Full<Bytes>>,
) -> Result<(u16, Option<String>, Bytes), ProviderError> {
    let work = async {
        let response = client
            .request(request)
            .await
            .map_err(|_| ProviderError::Connect)?;
        let status = response.status().as_u16();
        let next = response
            .headers()
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link);
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| ProviderError::Body)?
            .to_bytes();
        Ok((status, next, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| ProviderError::Timeout)?
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

fn api_get(url: &str, token: &str) -> Result<http::Request<Full<Bytes>>, ProviderError> {
    http::Request::get(url)
        .header(header::ACCEPT, "application/vnd.github+json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::USER_AGENT, "scopegate")
        .header("x-github-api-version", API_VERSION)
        .body(Full::new(Bytes::new()))
        .map_err(|_| ProviderError::Connect)
}

async fn get_json(
    client: &ProviderClient,
    url: &str,
    token: &str,
) -> Result<(Value, Option<String>), ProviderError> {
    let (status, next, body) = fetch(client, api_get(url, token)?).await?;
    if status != 200 {
        return Err(ProviderError::Status);
    }
    let value = serde_json::from_slice(&body).map_err(|_| ProviderError::Body)?;
    Ok((value, next))
}

/// Every item of a paginated list, up to [`MAX_PAGES`] pages; a next link must stay on the
/// API's origin.
async fn all_pages(
    client: &ProviderClient,
    api: &str,
    first: &str,
    token: &str,
) -> Result<Vec<Value>, ProviderError> {
    let mut items = Vec::new();
    let mut url = Some(first.to_owned());
    for _ in 0..MAX_PAGES {
        let Some(current) = url.take() else {
            break;
        };
        let (page, next) = get_json(client, &current, token).await?;
        let Value::Array(page) = page else {
            return Err(ProviderError::Body);
        };
        items.extend(page);
        url = next.filter(|n| n.starts_with(&format!("{api}/")));
    }
    Ok(items)
}

/// Exchanges the code and reads the user: the normalised identity (groups hold `org` and
/// `org:team` for the configured organisations the user belongs to).
pub async fn login(
    client: &ProviderClient,
    upstream: &UpstreamIdp,
    github: &GithubUpstream,
    secret: &str,
    code: &str,
    verifier: &str,
    now: i64,
) -> Result<UpstreamIdentity, GithubError> {
    let (web, api) = bases(github);
    let token = exchange_code(client, &web, upstream, secret, code, verifier).await?;
    let (user, _) = get_json(client, &format!("{api}/user"), &token).await?;
    let id = user
        .get("id")
        .and_then(Value::as_u64)
        .ok_or(ProviderError::Body)?;
    let login = user
        .get("login")
        .and_then(Value::as_str)
        .ok_or(ProviderError::Body)?
        .to_owned();
    let emails = all_pages(
        client,
        &api,
        &format!("{api}/user/emails?per_page=100"),
        &token,
    )
    .await?;
    let (email, email_verified) = primary_email(&emails);
    let mut groups = Vec::new();
    if !github.orgs.is_empty() {
        groups = org_groups(client, upstream, github, &api, &login, &token).await?;
        if groups.is_empty() {
            return Err(GithubError::DeniedOrg);
        }
    }
    Ok(UpstreamIdentity {
        upstream: upstream.name.clone(),
        subject: id.to_string(),
        email,
        email_verified,
        email_authoritative: false,
        name: profile_text(&user, "name"),
        username: Some(login),
        groups,
        hosted_domain: None,
        authenticated_at: now,
    })
}

/// Exchanges the code at the token endpoint of `web`: the user's access token.
async fn exchange_code(
    client: &ProviderClient,
    web: &str,
    upstream: &UpstreamIdp,
    secret: &str,
    code: &str,
    verifier: &str,
) -> Result<String, GithubError> {
    let body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}&client_id={}&client_secret={}",
        form_encode(code),
        form_encode(&upstream.callback_url),
        form_encode(verifier),
        form_encode(&upstream.client_id),
        form_encode(secret)
    );
    let request = http::Request::post(format!("{web}/login/oauth/access_token"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "scopegate")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ProviderError::Connect)?;
    let (status, _, answer) = fetch(client, request).await?;
    // GitHub refuses a code with 200 and an error member; any other status (a rate limit,
    // an outage) says nothing about the code.
    if status != 200 {
        return Err(ProviderError::Status.into());
    }
    let answer: Value = serde_json::from_slice(&answer).map_err(|_| ProviderError::Body)?;
    if answer.get("error").is_some() {
        return Err(GithubError::Refused);
    }
    Ok(answer
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or(GithubError::Refused)?
        .to_owned())
}

/// The primary address of `/user/emails` (at most 256 bytes), and whether GitHub says it
/// is verified.
fn primary_email(emails: &[Value]) -> (Option<String>, bool) {
    let primary = emails
        .iter()
        .find(|e| e.get("primary").and_then(Value::as_bool) == Some(true));
    let email = primary
        .and_then(|e| e.get("email"))
        .and_then(Value::as_str)
        .filter(|e| e.len() <= 256)
        .map(str::to_owned);
    let verified = email.is_some()
        && primary
            .and_then(|e| e.get("verified"))
            .and_then(Value::as_bool)
            == Some(true);
    (email, verified)
}

/// A non-empty profile field of at most 256 bytes, without control characters.
fn profile_text(user: &Value, name: &str) -> Option<String> {
    user.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .map(|s| s.chars().filter(|c| !c.is_control()).collect::<String>())
}

/// The groups of the configured organisations `login` belongs to: `org` for an org without
/// team rules, `org:team` for each configured team of the user's. The teams are read once,
/// when a member org has team rules.
async fn org_groups(
    client: &ProviderClient,
    upstream: &UpstreamIdp,
    github: &GithubUpstream,
    api: &str,
    login: &str,
    token: &str,
) -> Result<Vec<String>, GithubError> {
    let mut groups = Vec::new();
    let mut teams: Option<Vec<Value>> = None;
    for org in &github.orgs {
        if !is_member(client, upstream, api, &org.name, login, token).await? {
            continue;
        }
        if org.teams.is_empty() {
            groups.push(org.name.clone());
            continue;
        }
        if teams.is_none() {
            let url = format!("{api}/user/teams?per_page=100");
            teams = Some(all_pages(client, api, &url, token).await?);
        }
        groups.extend(team_groups(org, teams.iter().flatten()));
    }
    Ok(groups)
}

/// Whether `login` is a member of `org` (`204`); `404`, and `302` for an organisation
/// that hides its members from the app, are not. Any other status is an error.
async fn is_member(
    client: &ProviderClient,
    upstream: &UpstreamIdp,
    api: &str,
    org: &str,
    login: &str,
    token: &str,
) -> Result<bool, ProviderError> {
    let url = format!(
        "{api}/orgs/{}/members/{}",
        form_encode(org),
        form_encode(login)
    );
    let (status, _, _) = fetch(client, api_get(&url, token)?).await?;
    match status {
        204 => Ok(true),
        404 => Ok(false),
        302 => {
            tracing::warn!(upstream = %upstream.name, "GitHub hides this organisation's members: an owner must approve the OAuth app (OrgAccessNotGranted)");
            Ok(false)
        }
        // A rate limit (403, 429) or an outage is not "not a member": the login is
        // retried later, never denied for it.
        _ => Err(ProviderError::Status),
    }
}

/// `org:team` for each of the user's `teams` that belongs to `org` and is configured.
fn team_groups<'a>(
    org: &'a GithubOrg,
    teams: impl Iterator<Item = &'a Value> + 'a,
) -> impl Iterator<Item = String> + 'a {
    teams.filter_map(move |team| {
        let in_org = team
            .pointer("/organization/login")
            .and_then(Value::as_str)
            .is_some_and(|o| o.eq_ignore_ascii_case(&org.name));
        let slug = team.get("slug").and_then(Value::as_str)?;
        (in_org && org.teams.iter().any(|t| t == slug)).then(|| format!("{}:{slug}", org.name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_others() {
        let header = r#"<https://api.github.com/user/emails?page=3>; rel="last", <https://api.github.com/user/emails?page=2>; rel="next""#;
        assert_eq!(
            next_link(header).as_deref(),
            Some("https://api.github.com/user/emails?page=2")
        );
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev""#), None);
    }

    #[test]
    fn enterprise_hosts_use_api_v3() {
        let mut github = GithubUpstream::default();
        assert_eq!(bases(&github).1, "https://api.github.com");
        github.host_name = "git.corp.example".into();
        assert_eq!(
            bases(&github),
            (
                "https://git.corp.example".into(),
                "https://git.corp.example/api/v3".into()
            )
        );
        assert_eq!(scopes(&github), "read:user user:email");
    }
}
