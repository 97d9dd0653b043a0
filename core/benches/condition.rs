//! The cost of a `when` condition on the request path: what it adds to a decision.
//! `cargo bench -p scopegate-core --bench condition`

use criterion::{Criterion, criterion_group, criterion_main};
use scopegate_core::claims::KeptClaims;
use scopegate_core::condition::{Condition, RequestFacts};
use serde_json::json;

fn conditions(c: &mut Criterion) {
    // A typical access token's claims.
    let claims = json!({
        "iss": "https://auth.shop.svc", "sub": "alice", "aud": "https://orders.shop.svc",
        "client_id": "shop.web", "scope": "orders:read orders:write",
        "iat": 1_800_000_000, "exp": 1_800_000_900, "jti": "3f0c9b1e6d2a4c58",
        "email": "alice@example.com", "tenant": "acme",
        "groups": ["team-orders", "admins", "eu"]
    });
    // Kept with a cached token: converted to CEL once, on the first evaluation.
    let claims = KeptClaims::new(claims.as_object().cloned().unwrap_or_default());
    let mut headers = http::HeaderMap::new();
    headers.insert("x-env", http::HeaderValue::from_static("prod"));
    let request = RequestFacts {
        method: "POST",
        path: "/tenants/acme/orders",
        headers: &headers,
        source: "10.0.0.7".parse().ok(),
    };
    for (name, expr) in [
        ("group", r#""admins" in claims.groups"#),
        ("email_domain", r#"claims.email.endsWith("@example.com")"#),
        (
            "tenant_path",
            r#"request.path.startsWith("/tenants/" + claims.tenant + "/")"#,
        ),
        (
            "method_header",
            r#"request.method == "POST" && request.headers["x-env"] == "prod""#,
        ),
        (
            "exists",
            r#"claims.groups.exists(g, g.startsWith("team-"))"#,
        ),
    ] {
        let condition = Condition::compile(expr).expect("compiles");
        assert_eq!(condition.evaluate(&claims, &request), Ok(true), "{expr}");
        c.bench_function(&format!("when/{name}"), |b| {
            b.iter(|| condition.evaluate(&claims, &request))
        });
    }
    c.bench_function("when/compile_group", |b| {
        b.iter(|| Condition::compile(r#""admins" in claims.groups"#))
    });
}

criterion_group!(benches, conditions);
criterion_main!(benches);
