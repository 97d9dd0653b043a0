//! Every document in examples/ parses as the type its kind names, so examples cannot rot.

use scopegate_crds::v1alpha1::{AuthPolicy, OAuthClient};
use serde::Deserialize;

#[test]
fn every_example_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("readable example");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document).expect("valid YAML");
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_owned();
            let parsed = match kind.as_str() {
                "AuthPolicy" => serde_yaml_ng::from_value::<AuthPolicy>(value).map(|_| ()),
                "OAuthClient" => serde_yaml_ng::from_value::<OAuthClient>(value).map(|_| ()),
                "Namespace" => Ok(()),
                other => panic!("{}: unexpected kind {other:?}", path.display()),
            };
            parsed.unwrap_or_else(|e| panic!("{} ({kind}): {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected the example set, parsed {seen} documents"
    );
}
