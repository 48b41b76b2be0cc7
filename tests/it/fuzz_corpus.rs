//! Replays the fuzzing corpus through the fuzz target bodies on every
//! `cargo test`: the committed seeds, everything cargo-fuzz added to
//! `tests/fuzz/corpus/`, and each crash input kept in
//! `tests/fuzz/regressions/<target>/` once its bug was fixed.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("readable entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", dir.display()),
    };
    files.retain(|p| p.is_file());
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut failures = Vec::new();
    for (name, body) in targets::TARGETS {
        let corpus = inputs(&root.join("corpus").join(name));
        let seeds = corpus
            .iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-")
            })
            .count();
        assert!(
            seeds >= 4,
            "target {name}: only {seeds} seed files; run write-seeds"
        );
        let regressions = inputs(&root.join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("corpus file");
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
        eprintln!(
            "{name}: {} corpus inputs, {} regression inputs",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}

/// The seeds are valid inputs that reach deep into each parser (not bytes
/// that every parser rejects at once), so the replay above exercises the
/// success paths too.
#[test]
fn the_seeds_are_accepted_by_the_code_they_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let read = |t: &str, n: &str| std::fs::read(root.join(t).join(n)).expect(n);
    let verifying = targets::client_key().verifying_key();
    for i in 0..3 {
        let req = locket::protocol::Request::decode(&read("request", &format!("seed-sealed-{i}")))
            .expect("sealed request seed decodes");
        assert!(
            req.verify(&verifying),
            "seed-sealed-{i} carries a good signature"
        );
        locket::protocol::RequestBody::decode(&read("request", &format!("seed-body-{i}")))
            .expect("body seed decodes");
    }
    for i in 0..2 {
        let answer = locket::protocol::open_answer(
            &read("answer", &format!("seed-sealed-{i}")),
            targets::reply_key(),
            &targets::answer_header(),
        )
        .expect("sealed answer seed opens with the committed reply key");
        assert_eq!(answer.secrets.len(), 2);
        assert_eq!(answer.missing.len(), i);
    }
    let text = String::from_utf8(read("config", "seed-server-toml")).unwrap();
    locket::config::server::ServerConfig::from_toml_str(&text).expect("example config");
    let yaml = String::from_utf8(read("config", "seed-registry-yaml")).unwrap();
    let clients = locket::v1::import::import_yaml(&yaml, &[]).expect("registry seed");
    assert!(clients.contains_key("billing"));
    let pem = String::from_utf8(read("keys", "seed-client-pem")).unwrap();
    locket::keys::ClientKey::from_pem(&pem).expect("client key seed");
    for i in 0..3 {
        let text = String::from_utf8(read("template", &format!("seed-template-{i}"))).unwrap();
        let t = locket::deliver::template::Template::parse("seed", &text).expect("template seed");
        assert!(!t.names().is_empty(), "seed-template-{i} has placeholders");
    }
    let body = read("v1_wire", "seed-original-request");
    locket::v1::body_shape([body.as_slice()]).expect("an original request passes the shape check");
    let req: locket::v1::wire::Request = serde_json::from_slice(&body).expect("original request");
    locket::v1::wire::parse_public_key_pem(&req.client_pubkey).expect("its client key parses");
}
