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

/// An AuthPolicy AdmissionReview, read.
pub struct PolicyReview {
    uid: String,
    object: Value,
    /// The conditions of the new object differ from the old object's (or it is new).
    conditions_changed: bool,
}

impl PolicyReview {
    /// Reads an AdmissionReview.
    pub fn read(body: &[u8]) -> Result<Self, String> {
        let (request, uid) = super::admission_request(body)?;
        let object = request.get("object").cloned().unwrap_or(Value::Null);
        let conditions_changed = conditions(&object) != conditions(&request["oldObject"]);
        Ok(Self {
            uid,
            object,
            conditions_changed,
        })
    }

    /// Whether answering needs the compiler: the policy carries conditions other than those
    /// it had. (An update that leaves them as they were, such as a rotation annotation, is
    /// answered at once: they were checked when written, and the operator checks them again
    /// before every render.)
    pub fn must_compile(&self) -> bool {
        self.conditions_changed && !conditions(&self.object).is_empty()
    }

    /// The answer after compiling every condition, and its outcome label.
    pub fn judge(&self) -> (Value, &'static str) {
        // The API server checked the schema before calling: an object that does not read as
        // an AuthPolicy here is refused rather than waved through unchecked.
        let refused = match serde_json::from_value::<AuthPolicy>(self.object.clone()) {
            Ok(policy) => refusal(&policy),
            Err(e) => Some(format!("the object does not read as an AuthPolicy: {e}")),
        };
        match refused {
            None => self.allow(),
            Some(message) => self.refuse(422, "Invalid", &message, "policy_refused"),
        }
    }

    /// Allowed, without compiling.
    pub fn allow(&self) -> (Value, &'static str) {
        let response = json!({"uid": self.uid, "allowed": true});
        (super::admission_answer(response), "policy_allowed")
    }

    /// Refused for now: other policies' conditions hold the compiler; the write may be
    /// retried.
    pub fn busy(&self) -> (Value, &'static str) {
        let message = "the AuthPolicy validator is busy compiling other policies' when conditions: retry in a moment";
        self.refuse(429, "TooManyRequests", message, "policy_busy")
    }

    fn refuse(
        &self,
        code: u16,
        reason: &str,
        message: &str,
        outcome: &'static str,
    ) -> (Value, &'static str) {
        let response = json!({
            "uid": self.uid,
            "allowed": false,
            "status": {"code": code, "reason": reason, "message": message},
        });
        (super::admission_answer(response), outcome)
    }
}

/// The `when` conditions of a policy object as sent, in order.
fn conditions(object: &Value) -> Vec<&str> {
    (object["spec"]["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| rule["when"].as_str())
        .collect()
}

/// Answers one AdmissionReview of an AuthPolicy (compiling what it must): the response, and
/// whether it was allowed.
pub fn review(body: &[u8]) -> Result<(Value, bool), String> {
    let review = PolicyReview::read(body)?;
    let (answer, outcome) = if review.must_compile() {
        review.judge()
    } else {
        review.allow()
    };
    Ok((answer, outcome == "policy_allowed"))
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

    #[test]
    fn an_update_that_keeps_its_conditions_needs_no_compiler_and_a_busy_answer_refuses() {
        let mut update = review_of(json!([{"paths": ["/a"], "when": "claims.a == 1"}]));
        update["request"]["oldObject"] = update["request"]["object"].clone();
        let read = PolicyReview::read(update.to_string().as_bytes()).unwrap();
        assert!(
            !read.must_compile(),
            "a rotation annotation needs no compiler"
        );
        assert_eq!(read.allow().0["response"]["allowed"], true);
        update["request"]["oldObject"]["spec"]["rules"][0]["when"] = json!("claims.a == 2");
        let changed = PolicyReview::read(update.to_string().as_bytes()).unwrap();
        assert!(changed.must_compile());
        let none = review_of(json!([{"paths": ["/a"]}]));
        assert!(
            !PolicyReview::read(none.to_string().as_bytes())
                .unwrap()
                .must_compile()
        );
        let (busy, outcome) = changed.busy();
        assert_eq!(outcome, "policy_busy");
        assert_eq!(busy["response"]["allowed"], false);
        assert_eq!(busy["response"]["status"]["code"], 429);
        assert_eq!(busy["response"]["uid"], "u-1");
    }
}
