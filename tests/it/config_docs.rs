//! docs/configuration.md's reference tables against the code: every key
//! the server and the client accept is documented, every documented key is
//! accepted (with the example the table gives), and nothing else is.
//!
//! What the code accepts is read from the code itself: each struct refuses
//! unknown keys (serde's `deny_unknown_fields`), and its refusal lists the
//! keys it expects.

use std::collections::{BTreeMap, BTreeSet};

use locket::config::client::ClientLayer;
use locket::config::server::ServerConfig;

/// The reference tables: section -> [(key, example)].
fn documented() -> BTreeMap<&'static str, Vec<(String, String)>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let start = text.find("## Reference").expect("a Reference section");
    let end = text[start..]
        .find("\n## Server configuration")
        .map_or(text.len(), |e| start + e);
    let mut out: BTreeMap<&'static str, Vec<(String, String)>> = BTreeMap::new();
    let mut section = None;
    for line in text[start..end].lines() {
        if let Some(h) = line.strip_prefix("### ") {
            section = Some(match h {
                h if h.starts_with("`server.toml`") => "server",
                "`[tls]`" => "tls",
                "`[v1]`" => "v1",
                "`[sealed_set]`" => "sealed_set",
                "`client.toml`" => "client",
                other => panic!("an unknown reference table: {other}"),
            });
        } else if line.starts_with("| `") {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let unquote = |c: &str| c.trim_matches('`').to_owned();
            let row = (unquote(cells[1]), unquote(cells[5]));
            out.entry(section.expect("a table under a heading"))
                .or_default()
                .push(row);
        }
    }
    out
}

/// The keys a struct accepts, from its refusal of an unknown one.
fn accepted(refusal: String) -> BTreeSet<String> {
    let expected = refusal
        .split("expected")
        .nth(1)
        .unwrap_or_else(|| panic!("not an unknown-key refusal: {refusal}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn server_refusal(text: &str) -> String {
    toml::from_str::<ServerConfig>(text)
        .expect_err("an unknown key is refused")
        .to_string()
}

/// The one source every example is checked with.
const SOURCE: &str = "[[sources]]\ntype = \"env\"\nprefix = \"APP_\"\n";

#[test]
fn the_configuration_reference_matches_the_code() {
    let docs = documented();
    let keys = |s: &str| -> BTreeSet<String> { docs[s].iter().map(|(k, _)| k.clone()).collect() };
    let code: BTreeMap<&str, BTreeSet<String>> = [
        ("server", accepted(server_refusal("zz_unknown = 1"))),
        ("tls", accepted(server_refusal("[tls]\nzz_unknown = 1"))),
        ("v1", accepted(server_refusal("[v1]\nzz_unknown = 1"))),
        (
            "sealed_set",
            accepted(server_refusal("[sealed_set]\nzz_unknown = 1")),
        ),
        (
            "client",
            accepted(
                toml::from_str::<ClientLayer>("zz_unknown = 1")
                    .unwrap_err()
                    .to_string(),
            ),
        ),
    ]
    .into_iter()
    .collect();
    for (section, accepted) in &code {
        assert_eq!(
            &keys(section),
            accepted,
            "docs/configuration.md, table {section}: documented vs accepted"
        );
    }

    // Every example is accepted: each top-level server key alone, through
    // the server's own loading and checks; each section's keys together;
    // each client key alone.
    let key_line = locket::keys::ClientKey::from_seed(&[9; 32]).public_line();
    for (key, example) in &docs["server"] {
        let mut text = format!("{key} = {}\n", example.replace("ed25519:...", &key_line));
        if key != "sources" {
            // A server needs a source.
            text.push_str(SOURCE);
        }
        if let Err(e) = ServerConfig::from_toml_str(&text) {
            panic!("the documented example of {key} is refused: {e}\n{text}");
        }
    }
    for section in ["tls", "v1", "sealed_set"] {
        let body: String = docs[section]
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        let text = format!("[{section}]\n{body}{SOURCE}");
        if let Err(e) = ServerConfig::from_toml_str(&text) {
            panic!("the documented [{section}] example is refused: {e}\n{text}");
        }
    }
    for (key, example) in &docs["client"] {
        let text = format!("{key} = {example}\n");
        if let Err(e) = toml::from_str::<ClientLayer>(&text) {
            panic!("the documented example of {key} is refused: {e}");
        }
    }
}
