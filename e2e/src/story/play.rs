//! The story itself, act by act: a service token, every refusal the policy defines, a call
//! with no secret anywhere, a user's login, web pages whose sidecar keeps the browser's
//! session, Google added to the running issuer, a service calling another on a user's behalf,
//! the rate limit, two key rotations under load, and a revocation reaching the enforcement
//! point.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use scopegate_core::session::{LOGOUT_PATH, SESSION_COOKIE};
use serde_json::{Value, json};

use super::describe::{challenge_of, describe, peek, short};
use super::load::Load;
use super::{Outcome, STORY_PROPAGATION, Shop};
use crate::eventually;

/// Plays the story on a running shop, saying each step as one line; any answer other than the
/// policy's is an error.
pub async fn play(shop: Arc<Shop>, say: &dyn Fn(&str)) -> anyhow::Result<Outcome> {
    let read = service_token(&shop, say)?;
    refusals(&shop, &read, say)?;
    secretless_call(&shop, say).await?;
    let user_token = password_login(&shop, say)?;
    storefront_session(&shop, say).await?;
    let google_token = google_login(&shop, say).await?;
    on_behalf(&shop, &user_token, &google_token, say)?;
    rate_limit(&shop, &user_token, say)?;
    let (kids, accepted) = rotation_under_load(&shop, say).await?;
    let revocation_took = revocation(&shop, &read, say).await?;
    Ok(Outcome {
        kids,
        accepted_during_rotation: accepted,
        revocation_took,
    })
}

/// Act 1: a job outside the cluster gets a token with its client secret and calls orders.
/// Returns the token.
fn service_token(shop: &Shop, say: &dyn Fn(&str)) -> anyhow::Result<String> {
    let read = shop.accounting_token(None)?;
    let audience = &peek(&read)?.1["aud"];
    ensure!(
        audience == shop.orders_audience.as_str()
            || audience
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == shop.orders_audience.as_str())),
        "the token's audience is {audience}, not {}",
        shop.orders_audience
    );
    say(&format!(
        "accounting, a job outside the cluster, asks the issuer for a token with its client secret (client_credentials, over TLS): {}",
        describe(&read)?
    ));
    let allowed = shop.orders("GET", "/orders", Some(&read))?;
    ensure!(
        allowed.status == 200,
        "GET /orders with read:orders answered {}",
        allowed.status
    );
    let caller: Value = serde_json::from_str(&allowed.body)?;
    say(&format!(
        "GET  /orders with it          -> 200; the app, which has no auth code, reads the caller from headers: {}",
        caller["caller"]
    ));
    Ok(read)
}

/// Act 2: everything the policy refuses, and why.
fn refusals(shop: &Shop, read: &str, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let anonymous = shop.orders("GET", "/orders", None)?;
    ensure!(
        anonymous.status == 401 && !challenge_of(&anonymous).contains("error="),
        "no token: {} {}",
        anonymous.status,
        challenge_of(&anonymous)
    );
    say(&format!(
        "GET  /orders without a token -> 401, WWW-Authenticate: {}",
        challenge_of(&anonymous)
    ));
    let forbidden = shop.orders("POST", "/orders", Some(read))?;
    ensure!(
        forbidden.status == 403
            && challenge_of(&forbidden).contains("insufficient_scope")
            && challenge_of(&forbidden).contains("write:orders"),
        "POST /orders with read:orders: {} {}",
        forbidden.status,
        challenge_of(&forbidden)
    );
    say(&format!(
        "POST /orders with read:orders -> 403, WWW-Authenticate: {}",
        challenge_of(&forbidden)
    ));
    let tampered = shop.orders(
        "POST",
        "/orders",
        Some(&with_scope(read, "read:orders write:orders")?),
    )?;
    ensure!(
        tampered.status == 401 && challenge_of(&tampered).contains("invalid_token"),
        "an edited token: {} {}",
        tampered.status,
        challenge_of(&tampered)
    );
    say(&format!(
        "POST /orders with the token's scope edited to add write:orders -> 401, WWW-Authenticate: {}",
        challenge_of(&tampered)
    ));
    let garbled = shop.orders("GET", "/orders", Some("not a token"))?;
    ensure!(
        garbled.status == 400,
        "a malformed Authorization header: {}",
        garbled.status
    );
    say(&format!(
        "GET  /orders with \"Authorization: Bearer not a token\" -> 400, WWW-Authenticate: {}",
        challenge_of(&garbled)
    ));
    Ok(())
}

/// `token` with its `scope` claim edited to `scope` and its signature kept.
fn with_scope(token: &str, scope: &str) -> anyhow::Result<String> {
    let (header, mut claims) = peek(token)?;
    claims["scope"] = json!(scope);
    let signature = token.rsplit('.').next().unwrap_or_default();
    Ok(format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    ))
}

/// Act 3: billing, in the cluster, calls orders with no secret anywhere: its app calls through
/// its sidecar, which obtains billing's token with the pod's ServiceAccount token.
async fn secretless_call(shop: &Shop, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let billing = format!("{}.billing", shop.namespace);
    let answer = eventually("billing's call to orders", || async {
        let answer = shop.billing_charge()?;
        ensure!(answer["orders_status"] == 200, "{answer}");
        Ok(answer)
    })
    .await?;
    let caller = &answer["orders"]["caller"];
    ensure!(
        caller["client_id"] == billing.as_str()
            && caller["subject"] == billing.as_str()
            && caller["scopes"] == "read:orders",
        "orders saw another caller than billing: {answer}"
    );
    let (authentication, secret_name, secrets) = shop.client_credentials_of("billing").await?;
    ensure!(
        authentication.contains("ServiceAccount token")
            && authentication.ends_with("no secret")
            && secret_name.is_none()
            && !secrets.iter().any(|s| s.contains("billing")),
        "billing has a secret: {authentication:?}, {secret_name:?}, {secrets:?}"
    );
    say(&format!(
        "billing, in the cluster, calls orders with no secret anywhere: its app, which has no auth code, sends GET /orders to its sidecar (HTTP_PROXY), which gets billing's token with the pod's projected ServiceAccount token (RFC 7523) and attaches it -> {}; orders' app reads {}; OAuthClient billing's status.authentication: \"{authentication}\", and no Secret of the namespace is billing's",
        answer["orders_status"], caller
    ));
    Ok(())
}

/// Act 4: a user signs in on the app's own login page. Returns her access token.
fn password_login(shop: &Shop, say: &dyn Fn(&str)) -> anyhow::Result<String> {
    let scope = "read:items read:orders write:orders";
    ensure!(
        shop.login("alice", "not her password", scope).is_err(),
        "a wrong password got a code"
    );
    let login = shop.login("alice", "wonderland", scope)?;
    let user_token = login["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    ensure!(
        login["refresh_token"].is_string(),
        "no refresh token for the shop app"
    );
    say(&format!(
        "alice signs in to the shop app (a public client: authorization code + PKCE; the shop's login page checks her password and accepts the login on the sidecar's mint socket; a wrong password got no code): {}, plus a refresh token",
        describe(&user_token)?
    ));
    Ok(user_token)
}

/// Act 5: the storefront's web pages, whose app has no login code: its sidecar logs the
/// browser in at the issuer and keeps the session in a cookie, refuses a cross-site write
/// with it, and logs out, after which the old cookie opens nothing.
async fn storefront_session(shop: &Shop, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let (authorize, cookie, sealed) = shop.storefront_sign_in("alice", "wonderland")?;
    for part in ["response_type=code", "code_challenge_method=S256", "state="] {
        ensure!(
            authorize.contains(part),
            "the storefront's authorization request lacks {part}: {authorize}"
        );
    }
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        ensure!(
            cookie
                .split("; ")
                .any(|a| a.eq_ignore_ascii_case(attribute)),
            "the session cookie lacks {attribute}: {cookie}"
        );
    }
    let page = shop.storefront_page("GET", "/shop/", &[], &[])?;
    ensure!(
        page.status == 200 && page.body.contains("Signed in as alice"),
        "/shop/ with the session answered {}: {}",
        page.status,
        page.body
    );
    say(&format!(
        "alice opens the storefront's web pages (examples/apps/storefront.py, not a line of login code): GET /shop/ -> 302 to the issuer's authorize (code + PKCE S256, state), the same login page, then the storefront sidecar's callback, which checks state and iss, redeems the code with the pod's ServiceAccount token and sets one cookie, {cookie}; the page reads \"Signed in as alice\" and no token reached the browser"
    ));

    let own = shop.storefront_origin().to_owned();
    let cart = [("product", "grinder")];
    let cross_site = shop.storefront_page(
        "POST",
        "/shop/cart",
        &cart,
        &[("Origin", "https://evil.example")],
    )?;
    ensure!(
        cross_site.status == 403,
        "a cross-site POST with alice's cookie answered {}",
        cross_site.status
    );
    let same_site = shop.storefront_page("POST", "/shop/cart", &cart, &[("Origin", &own)])?;
    ensure!(
        same_site.status == 303,
        "the storefront's own form answered {}: {}",
        same_site.status,
        same_site.body
    );
    let page = shop.storefront_page("GET", "/shop/", &[], &[])?;
    ensure!(
        page.body.contains("Cart: grinder<"),
        "the cart after one accepted and one refused POST: {}",
        page.body
    );
    say(
        "POST /shop/cart with alice's cookie from another site (Origin https://evil.example) -> 403; from the storefront's own page -> 303, and her cart holds one grinder",
    );

    // The cookie the callback set, as the browser kept it: what a thief would put back.
    let before = shop
        .storefront_cookie(SESSION_COOKIE)?
        .context("no session cookie in the browser")?;
    ensure!(
        before == sealed,
        "the browser's session cookie is not the one the callback set"
    );
    let logout = shop.storefront_page("POST", LOGOUT_PATH, &[], &[("Origin", &own)])?;
    ensure!(
        logout.status == 303 && shop.storefront_cookie(SESSION_COOKIE)?.is_none(),
        "logout answered {} and left the cookie: {:?}",
        logout.status,
        logout.headers
    );
    let after = shop.storefront_page("GET", "/shop/", &[], &[])?;
    ensure!(
        after.status == 302,
        "/shop/ after logout answered {}",
        after.status
    );
    let replay = format!("{SESSION_COOKIE}={before}");
    eventually("the cookie from before logout refused", || async {
        let replayed = shop.storefront_page("GET", "/shop/", &[], &[("Cookie", &replay)])?;
        ensure!(
            replayed.status == 302,
            "the cookie from before logout answered {}",
            replayed.status
        );
        Ok(())
    })
    .await?;
    say(&format!(
        "alice logs out (POST {LOGOUT_PATH} from the page -> {}, to {}): the sidecar revoked her session's refresh family at the issuer (RFC 7009) and cleared the cookie; /shop/ sends her to log in again, also with the cookie from before logout put back",
        logout.status,
        logout.header("location").unwrap_or_default()
    ));
    Ok(())
}

/// Act 6: Google login, added to the running issuer. Returns ann's access token.
async fn google_login(shop: &Shop, say: &dyn Fn(&str)) -> anyhow::Result<String> {
    let callback = shop.add_google().await?;
    say(&format!(
        "the admin adds \"Continue with Google\" to the running issuer (a Secret with Google's client secret, an upstream in AuthPolicy auth; here Google is a stand-in, npm oidc-provider at {}): status.upstreams names the callback URL to register at Google, {callback}; no pod restarted",
        shop.google.issuer
    ));
    let (choices, google) = shop.google_login("ann", "read:orders")?;
    let google_token = google["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let (header, claims) = peek(&google_token)?;
    let subject = claims["sub"].as_str().unwrap_or_default();
    ensure!(
        claims["iss"] == shop.issuer.as_str()
            && subject.starts_with("user:google-")
            && !google_token.contains("ann@")
            && header["kid"].as_str() == Some(shop.active_kid().await?.as_str()),
        "the token after a Google login is not the shop's own for its own user: {header} {claims}"
    );
    let reads = shop.orders("GET", "/orders", Some(&google_token))?;
    ensure!(
        reads.status == 200,
        "GET /orders with the Google user's token answered {}",
        reads.status
    );
    say(&format!(
        "ann signs in to the shop app with Google (the issuer's chooser offers {}; Google's ID token is checked, nonce, PKCE and all, then thrown away; the shop's login app links Google subject \"ann\" to its own user on the mint socket): the app gets the shop's token, not Google's: {}; GET /orders with it -> 200",
        choices.join(" / "),
        describe(&google_token)?
    ));
    Ok(google_token)
}

/// Act 7: orders asks inventory on alice's behalf: its app passes her Authorization header on
/// through its sidecar, which exchanges her token (RFC 8693) for one of inventory's naming
/// orders as the actor. ann's token, without the scope inventory needs, is not exchanged.
fn on_behalf(shop: &Shop, alice: &str, ann: &str, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let orders = format!("{}.orders", shop.namespace);
    let answer: Value = serde_json::from_str(&shop.orders("GET", "/stock", Some(alice))?.body)?;
    ensure!(answer["inventory_status"] == 200, "alice's stock: {answer}");
    let caller = &answer["inventory"]["caller"];
    ensure!(
        caller["subject"] == "user:alice"
            && caller["client_id"] == orders.as_str()
            && caller["actor"] == orders.as_str()
            && caller["act"] == json!({"sub": orders})
            && caller["scopes"] == "read:items",
        "inventory saw another caller than alice through orders: {answer}"
    );
    say(&format!(
        "GET  /stock at orders with alice's token: orders' app passes her Authorization header on to {}/stock through its sidecar, which exchanges her token for one of inventory's (RFC 8693, orders authenticated by its ServiceAccount token) -> {}; inventory's app, which has no auth code either, reads {caller}",
        shop.inventory_url, answer["inventory_status"]
    ));
    let refused: Value = serde_json::from_str(&shop.orders("GET", "/stock", Some(ann))?.body)?;
    let refusal = &refused["inventory"];
    ensure!(
        refused["inventory_status"] == 403
            && refusal["error"] == "caller_token_refused"
            && refusal["issuer_error"] == "invalid_scope",
        "ann's exchange: {refused}"
    );
    say(&format!(
        "GET  /stock at orders with ann's token (scope read:orders, no read:items) -> orders' sidecar answers its app {} {} (issuer_error {}) without calling inventory: an exchange only narrows",
        refused["inventory_status"],
        refusal["error"].as_str().unwrap_or_default(),
        refusal["issuer_error"].as_str().unwrap_or_default()
    ));
    Ok(())
}

/// Act 8: the rate limit.
fn rate_limit(shop: &Shop, user_token: &str, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let mut placed = 0;
    let limited = loop {
        let response = shop.orders("POST", "/orders", Some(user_token))?;
        match response.status {
            201 if placed < shop.order_limit => placed += 1,
            _ => break response,
        }
    };
    ensure!(
        limited.status == 429 && placed == shop.order_limit,
        "after {placed} orders (limit {}): {} {:?}",
        shop.order_limit,
        limited.status,
        limited.body
    );
    let retry_after = limited
        .header("retry-after")
        .context("429 without Retry-After")?
        .to_owned();
    say(&format!(
        "alice places orders: {placed} accepted (201), the next -> 429, Retry-After: {retry_after}s (the policy allows {} per minute per subject)",
        shop.order_limit
    ));
    Ok(())
}

/// Rotates the issuer's key once; returns the successor's kid once it signs and at least 20
/// requests of `load` with its tokens were accepted.
async fn rotate_once(
    shop: &Arc<Shop>,
    round: &str,
    previous: &str,
    load: &Load,
) -> anyhow::Result<String> {
    shop.rotate(round).await?;
    let next = eventually("the successor key signing", || {
        let (shop, previous) = (shop.clone(), previous.to_owned());
        async move {
            let kid = shop.active_kid().await?;
            ensure!(kid != previous, "still {kid}");
            Ok(kid)
        }
    })
    .await?;
    eventually("requests accepted with tokens of the new key", || {
        let accepted = load.accepted_with(&next);
        async move {
            ensure!(accepted >= 20, "{accepted} so far");
            Ok(())
        }
    })
    .await?;
    Ok(next)
}

/// Act 9: keys rotate twice while a client keeps calling; no valid request may be rejected,
/// and tokens signed by each new key must be accepted. Returns the kids and the requests
/// accepted.
async fn rotation_under_load(
    shop: &Arc<Shop>,
    say: &dyn Fn(&str),
) -> anyhow::Result<(Vec<String>, u32)> {
    let load = Load::start(shop.clone(), true);
    let mut kids = vec![shop.active_kid().await?];
    for round in ["1", "2"] {
        let previous = kids.last().cloned().unwrap_or_default();
        kids.push(rotate_once(shop, round, &previous, &load).await?);
    }
    let (accepted_by_kid, rejected) = load.stop().await?;
    ensure!(
        rejected.is_empty(),
        "valid requests rejected during rotation: {rejected:?}"
    );
    let count = |kid: &str| accepted_by_kid.get(kid).copied().unwrap_or_default();
    let per_key: Vec<String> = kids
        .iter()
        .map(|kid| format!("{} {}", short(kid), count(kid)))
        .collect();
    let accepted = accepted_by_kid.values().sum();
    say(&format!(
        "keys rotate twice (annotation scopegate.dev/rotate; each new key is published {STORY_PROPAGATION} before it signs), while accounting calls GET /orders 10 times a second with fresh tokens: accepted per signing key {}, {} rejected",
        per_key.join(" -> "),
        rejected.len()
    ));
    Ok((kids, accepted))
}

/// Act 10: revocation reaches the enforcement point; `read`, another token, keeps working.
/// Returns how long the refusal took.
async fn revocation(shop: &Arc<Shop>, read: &str, say: &dyn Fn(&str)) -> anyhow::Result<Duration> {
    let doomed = shop.accounting_token(None)?;
    let before = shop.orders("GET", "/orders", Some(&doomed))?;
    ensure!(
        before.status == 200,
        "a fresh token answered {}",
        before.status
    );
    let revoked_at = Instant::now();
    shop.revoke(&doomed)?;
    let refusal = eventually("the revoked token refused", || {
        let (shop, doomed) = (shop.clone(), doomed.clone());
        async move {
            let response = shop.orders("GET", "/orders", Some(&doomed))?;
            ensure!(response.status == 401, "still {}", response.status);
            Ok(response)
        }
    })
    .await?;
    let revocation_took = revoked_at.elapsed();
    let other = shop.orders("GET", "/orders", Some(read))?;
    ensure!(
        other.status == 200,
        "another token answered {} after the revocation",
        other.status
    );
    say(&format!(
        "accounting revokes a token (RFC 7009): orders refuses it {} ms later (WWW-Authenticate: {}), through the issuer's signed revocation feed; accounting's other tokens still work",
        revocation_took.as_millis(),
        challenge_of(&refusal)
    ));
    Ok(revocation_took)
}
