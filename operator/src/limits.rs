//! Per-namespace caps on what a tenant can make the operator do: issuers (each one means key
//! generation, a certificate, a registry to render) and OAuthClients (each one a secret to
//! hash, with argon2 for a chosen one). The oldest objects of a namespace are served up to the
//! cap; the others are refused with a status condition that says which cap, and are left as
//! they are (nothing rendered for them is deleted).

use kube::ResourceExt;

/// The caps, from the chart (`limits.*`). Zero means no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// AuthPolicies with `issuer.self` per namespace.
    pub issuers_per_namespace: usize,
    /// OAuthClients per namespace.
    pub clients_per_namespace: usize,
}

/// An object refused by a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    /// The cap.
    pub limit: usize,
    /// How many such objects the namespace has.
    pub count: usize,
}

/// Whether `target` is beyond `limit` among `peers` (the objects of its kind that count, its
/// own namespace's only), served oldest first (creation time, then name). `None` when it is
/// served or there is no cap.
pub fn over_limit<'a, K>(
    target: &K,
    peers: impl IntoIterator<Item = &'a K>,
    limit: usize,
) -> Option<OverLimit>
where
    K: kube::Resource + 'a,
{
    if limit == 0 {
        return None;
    }
    let key = |object: &K| {
        (
            object
                .meta()
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            object.name_any(),
        )
    };
    let namespace = target.namespace();
    let mut order: Vec<_> = peers
        .into_iter()
        .filter(|p| p.namespace() == namespace)
        .map(key)
        .collect();
    order.sort();
    let mine = key(target);
    // An object not in the cache yet (just created) counts last.
    let position = order.iter().position(|k| *k == mine).unwrap_or(order.len());
    (position >= limit).then_some(OverLimit {
        limit,
        count: order.len().max(position + 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn object(namespace: &str, name: &str, created: i64) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.namespace = Some(namespace.into());
        object.metadata.name = Some(name.into());
        object.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        object
    }

    #[test]
    fn the_oldest_are_served_up_to_the_cap_per_namespace() {
        let all = [
            object("a", "late", 30),
            object("a", "first", 10),
            object("a", "second-b", 20),
            object("a", "second-a", 20),
            object("b", "other", 1),
        ];
        let served: Vec<&str> = all
            .iter()
            .filter(|o| over_limit(*o, &all, 3).is_none())
            .map(|o| o.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(served, ["first", "second-b", "second-a", "other"]);
        assert_eq!(
            over_limit(&all[0], &all, 3),
            Some(OverLimit { limit: 3, count: 4 })
        );
        assert_eq!(over_limit(&all[0], &all, 0), None, "zero is no cap");
        // Deleting an older one makes room.
        let after = [all[0].clone(), all[2].clone(), all[3].clone()];
        assert_eq!(over_limit(&after[0], &after, 3), None);
    }

    #[test]
    fn an_object_not_cached_yet_counts_last() {
        let cached = [object("a", "x", 10), object("a", "y", 20)];
        let new = object("a", "aaa", 5);
        assert_eq!(
            over_limit(&new, &cached, 2),
            Some(OverLimit { limit: 2, count: 3 })
        );
    }
}
