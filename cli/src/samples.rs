//! Concrete request paths standing for a path pattern: its literal segments as written, a
//! sentinel segment (equal to no literal of any pattern) for each `*`, and zero to a few
//! sentinel segments for a final `/**`. Asking the sidecar's own matcher which rule wins at
//! each sample answers "can this rule ever decide?" and "what decides this document path?".

/// A segment that no pattern names: the sentinel, made longer until it equals no literal.
pub fn sentinel<'a>(patterns: impl IntoIterator<Item = &'a str>) -> String {
    let literals: Vec<String> = patterns
        .into_iter()
        .flat_map(|p| p.split('/'))
        .map(str::to_ascii_lowercase)
        .collect();
    let mut s = String::from("x-sample");
    while literals.contains(&s) {
        s.push('x');
    }
    s
}

/// Samples of `pattern`: `/**` stands for 0..=`extra` further segments.
pub fn instances(pattern: &str, sentinel: &str, extra: usize) -> Vec<String> {
    if pattern == "/" {
        return vec!["/".into()];
    }
    let (body, prefix) = match pattern.strip_suffix("/**") {
        Some(body) => (body, true),
        None => (pattern, false),
    };
    let filled: String = body
        .split('/')
        .skip(1)
        .map(|segment| {
            if segment == "*" {
                format!("/{sentinel}")
            } else {
                format!("/{segment}")
            }
        })
        .collect();
    // `/items/` keeps its trailing slash (split yields an empty last segment).
    if !prefix {
        return vec![filled];
    }
    (0..=extra)
        .map(|n| {
            let mut path = filled.clone();
            for _ in 0..n {
                path.push('/');
                path.push_str(sentinel);
            }
            if path.is_empty() {
                path.push('/');
            }
            path
        })
        .collect()
}

/// Every method worth asking about: those named anywhere, GET and POST, and one no rule
/// names.
pub fn methods<'a>(named: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = vec!["GET".into(), "POST".into()];
    for m in named {
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    out.push("X-UNNAMED".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_fill_wildcards_with_the_sentinel() {
        assert_eq!(instances("/items/*", "s", 2), ["/items/s"]);
        assert_eq!(instances("/items/", "s", 2), ["/items/"]);
        assert_eq!(
            instances("/items/**", "s", 2),
            ["/items", "/items/s", "/items/s/s"]
        );
        assert_eq!(instances("/**", "s", 1), ["/", "/s"]);
        assert_eq!(instances("/", "s", 1), ["/"]);
        assert_eq!(sentinel(["/x-sample/**", "/a"]), "x-samplex");
    }
}
