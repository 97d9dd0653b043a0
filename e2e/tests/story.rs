//! The whole story, asserted: Helm-installed scopegate, the operator as its ServiceAccount, the
//! manifests of `examples/` applied, the webhook injecting the sidecar into the `auth`,
//! `inventory`, `orders` and `billing` pods, all running as a kubelet would; tokens over TLS,
//! every answer the policy defines, billing calling orders with no secret anywhere, a user's
//! login, orders calling inventory on her behalf, keys rotating under load with zero rejected
//! valid requests, a revoked token refused. `make up` narrates the same story
//! (`src/bin/demo.rs`).

use std::sync::Arc;
use std::time::Duration;

use scopegate_e2e::ControlPlane;
use scopegate_e2e::setup::logs_dir;
use scopegate_e2e::story::{self, Shop};

#[tokio::test]
async fn the_examples_issue_verify_rotate_under_load_and_revoke() {
    let plane = ControlPlane::from_env().expect("control plane");
    let client = plane.client().await.expect("client");
    let namespace = format!("e2e-story-{}", std::process::id());
    let logs = logs_dir();
    let say = |line: &str| eprintln!("story: {line}");
    let shop = Arc::new(
        Shop::start(&client, &namespace, &logs, &say)
            .await
            .expect("the shop runs"),
    );

    // `play` fails on any answer other than the policy's; what it measured is checked here.
    let outcome = story::play(shop, &say).await.expect("the story");
    assert_eq!(outcome.kids.len(), 3, "{outcome:?}");
    assert!(
        outcome.kids[0] != outcome.kids[1] && outcome.kids[1] != outcome.kids[2],
        "{outcome:?}"
    );
    assert!(
        outcome.accepted_during_rotation > 50,
        "the load ran: {outcome:?}"
    );
    // The verifier's feed long-poll is the bound; the config's staleness limit is minutes.
    assert!(
        outcome.revocation_took < Duration::from_secs(30),
        "{outcome:?}"
    );
}
