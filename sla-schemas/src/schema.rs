//! The JSON Schema of SLA v2.0, generated from [`crate::types`]. The committed copy lives in
//! `sla-schemas/schemas/sla-v2.0.schema.json`; a golden test keeps it equal to what this makes.

use crate::types::Sla;
use schemars::generate::SchemaSettings;
use std::sync::LazyLock;

/// File name of the committed schema, under `sla-schemas/schemas/`.
pub const SCHEMA_FILE: &str = "sla-v2.0.schema.json";

/// The schema as a JSON value.
pub fn schema() -> serde_json::Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<Sla>().to_value()
}

/// The schema as pretty JSON text with a trailing newline, byte for byte the committed file.
/// Object keys are sorted, so the text does not depend on whether some other crate in the build
/// turned on serde_json's `preserve_order`.
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&sorted(schema())).unwrap_or_default();
    s.push('\n');
    s
}

fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    // The schema is generated from our own types; the golden test compiles it, so a failure
    // here is a build defect, not bad input.
    jsonschema::validator_for(&schema()).expect("generated SLA schema must compile")
});

/// The compiled schema, built once.
pub(crate) fn validator() -> &'static jsonschema::Validator {
    &VALIDATOR
}
