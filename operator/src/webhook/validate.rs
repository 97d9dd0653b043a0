//! The AuthPolicy validating webhook: what the schema's CEL cannot check, checked at
//! `kubectl apply`. Today that is each rule's `when` condition, compiled as the sidecar will
//! compile it, so that a policy the sidecar would refuse is refused with the compiler's words
//! and the rule's name instead of being accepted and reported later in its status. Pure.

use scopegate_core::condition::{Condition, MAX_POLICY_SOURCE_LEN};
use scopegate_core::policy::rule_label;
use scopegate_crds::v1alpha1::AuthPolicy;
use serde_json::{Value, json};

/// Longest compiler message quoted per rule.
const MAX_MESSAGE_BYTES: usize = 512;

/// Why `policy` is refused, or `None` when every condition compiles.
pub fn refusal(policy: &AuthPolicy) -> Option<String> {
    let total: usize = (policy.spec.rules.iter())
        .filter_map(|rule| rule.when.as_ref().map(String::len))
        .sum();
    if total > MAX_POLICY_SOURCE_LEN {
        return Some(format!(
            "spec.rules: the when conditions hold {total} bytes in all; at most {MAX_POLICY_SOURCE_LEN}"
        ));
    }
    let problems: Vec<String> = policy
        .spec
        .rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            let objection = Condition::compile(rule.when.as_deref()?).err()?;
            let label = rule_label(rule.name.as_deref(), Some(index));
            let mut objection = objection.to_string();
            if objection.len() > MAX_MESSAGE_BYTES {
                let mut end = MAX_MESSAGE_BYTES;
                while !objection.is_char_boundary(end) {
                    end -= 1;
                }
                objection.truncate(end);
                objection.push_str(" …");
            }
            Some(format!("spec.rules[{index}] ({label}).when: {objection}"))
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Answers one AdmissionReview of an AuthPolicy: the response, and whether it was allowed.
pub fn review(body: &[u8]) -> Result<(Value, bool), String> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request = review
        .get("request")
        .ok_or("AdmissionReview without request")?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or("request without uid")?;
    let object = request.get("object").cloned().unwrap_or(Value::Null);
    // The API server checked the schema before calling: an object that does not read as an
    // AuthPolicy here is refused rather than waved through unchecked.
    let refused = match serde_json::from_value::<AuthPolicy>(object) {
        Ok(policy) => refusal(&policy),
        Err(e) => Some(format!("the object does not read as an AuthPolicy: {e}")),
    };
    let response = match &refused {
        None => json!({"uid": uid, "allowed": true}),
        Some(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 422, "reason": "Invalid", "message": message},
        }),
    };
    Ok((
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
        refused.is_none(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(rules: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "object": {
                    "apiVersion": "scopegate.dev/v1alpha1",
                    "kind": "AuthPolicy",
                    "metadata": {"name": "orders", "namespace": "shop"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "orders"}},
                        "issuer": {"policyRef": {"name": "auth"}},
                        "audiences": ["https://orders.shop.svc"],
                        "upstream": {"port": 8080},
                        "rules": rules,
                    }
                }
            }
        })
    }

    fn answer(rules: Value) -> (Value, bool) {
        review(review_of(rules).to_string().as_bytes()).expect("a review")
    }

    #[test]
    fn conditions_that_compile_are_allowed() {
        let (response, allowed) = answer(json!([
            {"paths": ["/a"], "require": ["read"]},
            {"name": "tenant", "paths": ["/t/**"], "when": "\"admins\" in claims.groups"},
        ]));
        assert!(allowed);
        assert_eq!(response["response"]["uid"], "u-1");
        assert_eq!(response["response"]["allowed"], true);
    }

    #[test]
    fn each_bad_condition_is_named_with_its_rule_and_the_compilers_words() {
        let (response, allowed) = answer(json!([
            {"name": "tenant", "paths": ["/t/**"], "when": "claims.g.exists(x, x.lowerAscii() == 'a')"},
            {"paths": ["/ok"], "when": "true"},
            {"paths": ["/h"], "when": "request.headers[\"authorization\"] != \"\""},
        ]));
        assert!(!allowed);
        let status = &response["response"]["status"];
        assert_eq!(response["response"]["allowed"], false);
        assert_eq!(status["code"], 422);
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("spec.rules[0] (tenant).when: function \"lowerAscii\""),
            "{message}"
        );
        assert!(
            message.contains("spec.rules[2] (rules[2]).when: request.headers[\"authorization\"]"),
            "{message}"
        );
        assert!(!message.contains("rules[1]"), "{message}");
    }

    #[test]
    fn what_is_not_an_admission_review_is_an_error_not_an_answer() {
        assert!(review(b"{}").is_err());
        assert!(review(b"not json").is_err());
        let no_uid = json!({"request": {"object": {}}});
        assert!(review(no_uid.to_string().as_bytes()).is_err());
    }

    #[test]
    fn a_policy_may_not_hold_more_conditions_than_the_bound_and_messages_are_cut() {
        let long = format!("claims.a == \"{}\"", "x".repeat(2000));
        let rules: Vec<Value> = (0..9)
            .map(|i| json!({"paths": [format!("/r{i}")], "when": long}))
            .collect();
        let (response, allowed) = answer(json!(rules));
        assert!(!allowed);
        let message = response["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("at most 16384"), "{message}");

        // A compiler message quoting a long expression is cut.
        let unbalanced = format!("{}{}", "[".repeat(95), ",".repeat(1800));
        let (response, _) = answer(json!([{"paths": ["/a"], "when": unbalanced}]));
        let message = response["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.len() < 700, "{} bytes", message.len());
    }
}
