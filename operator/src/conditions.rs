//! Status conditions as pure values: what a reconcile concluded, merged with what the status
//! said before so that `lastTransitionTime` moves only when a condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One condition a reconcile concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conclusion {
    /// Condition type (Ready, KeysReady, Degraded, ...).
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// A sentence for people.
    pub message: String,
}

impl Conclusion {
    /// A condition that holds.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// The kstatus conditions (`Reconciling`, `Stalled`) that go with a `Ready` conclusion, so
/// that kstatus (Flux, kpt, `kubectl wait`-style tools) reads InProgress while the operator is
/// still at work and Failed when it cannot go on without a change: `Reconciling` is True when
/// Ready is False for a reason that passes by itself (`in_flight`), `Stalled` when Ready is
/// False for any other reason. Both are False when Ready is True.
pub fn kstatus(ready: &Conclusion, in_flight: bool) -> [Conclusion; 2] {
    let reconciling = if !ready.status && in_flight {
        Conclusion::yes("Reconciling", ready.reason, ready.message.clone())
    } else {
        Conclusion::no("Reconciling", "Reconciled", "no work in flight")
    };
    let stalled = if !ready.status && !in_flight {
        Conclusion::yes("Stalled", ready.reason, ready.message.clone())
    } else {
        Conclusion::no("Stalled", "AsExpected", "nothing blocks progress")
    };
    [reconciling, stalled]
}

/// Turns conclusions into API conditions, keeping `lastTransitionTime` of conditions whose
/// status did not change.
pub fn merge(
    existing: &[Condition],
    conclusions: &[Conclusion],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    conclusions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let last_transition_time = existing
                .iter()
                .find(|e| e.type_ == c.type_ && e.status == status)
                .map(|e| e.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_owned(),
                status: status.to_owned(),
                reason: c.reason.to_owned(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge(
            &[],
            &[Conclusion::yes("Ready", "Rendered", "ok")],
            Some(1),
            &at(10),
        );
        assert_eq!(first[0].last_transition_time, at(10));
        let same = merge(
            &first,
            &[Conclusion::yes("Ready", "Rendered", "still ok")],
            Some(2),
            &at(20),
        );
        assert_eq!(same[0].last_transition_time, at(10));
        assert_eq!(same[0].message, "still ok");
        let flipped = merge(
            &same,
            &[Conclusion::no("Ready", "Broken", "no")],
            Some(3),
            &at(30),
        );
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].observed_generation, Some(3));
    }
}
