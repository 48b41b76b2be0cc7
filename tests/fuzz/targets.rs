//! The bodies of locket's fuzz targets, shared by two runners:
//!
//! * cargo-fuzz (`tests/fuzz/fuzz_targets/<name>.rs`), which explores new
//!   inputs with libFuzzer's coverage feedback;
//! * the ordinary test suite (`tests/it/fuzz_corpus.rs`), which replays every
//!   committed corpus file and every crash input in `tests/fuzz/regressions/`
//!   through the same functions on every `cargo test`.
//!
//! Each body feeds the bytes to the parsers an attacker (or a broken config)
//! reaches, and asserts the properties that must hold for any input: no
//! panic, and whatever parses re-encodes to something that parses the same.
//! None of them touches the network, the file system or the clock.

#![allow(dead_code)] // each fuzz binary uses one body

use std::sync::OnceLock;

use locket::config::server::ServerConfig;
use locket::deliver::{output, template::Template};
use locket::keys::{self, ClientKey, ReplyKey, ServerKey, ServerPublicKey};
use locket::protocol::{self, Answer, Header, Request, RequestBody};
use locket::secret::SecretValue;
use locket::secret_set::SecretSet;
use locket::{crypto, source, v1};

/// A fuzz target body: takes any bytes, panics only on a bug.
pub(super) type Target = fn(&[u8]);

/// Every target, by the name cargo-fuzz knows it under.
pub(super) const TARGETS: &[(&str, Target)] = &[
    ("request", request),
    ("keys", keys),
    ("config", config),
    ("answer", answer),
    ("template", template),
    ("encoders", encoders),
    ("v1_wire", v1_wire),
];

/// The client key whose signatures the `request` seeds carry.
pub(super) fn client_key() -> &'static ClientKey {
    static KEY: OnceLock<ClientKey> = OnceLock::new();
    KEY.get_or_init(|| ClientKey::from_seed(&[7; 32]))
}

/// A fixed RSA key (test-only, committed; also the seeds' server key), so
/// that sealed answers in the corpus open on every run.
pub(super) fn reply_key() -> &'static ReplyKey {
    static KEY: OnceLock<ReplyKey> = OnceLock::new();
    KEY.get_or_init(|| ReplyKey::from_pem(include_str!("reply-key.pem")).expect("test reply key"))
}

/// The request header the `answer` seeds were sealed for.
pub(super) fn answer_header() -> Header {
    Header {
        client: "fuzz".into(),
        server_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        timestamp: 1_700_000_000,
        nonce: [9; protocol::NONCE_LEN],
        instance: None,
    }
}

/// `POST /v1/secrets` up to the RSA operation: the wire decoder, the
/// canonical signed bytes and the signature check, then the decoder of the
/// plaintext request body that runs right after the unwrap.
pub(super) fn request(data: &[u8]) {
    let verifying = client_key().verifying_key();
    if let Ok(req) = Request::decode(data) {
        let signed = req.signed_bytes();
        let ok = req.verify(&verifying);
        let _ = req.header.request_aad();
        let _ = req.header.response_aad();
        let again = Request::decode(&req.encode()).expect("a decoded request re-encodes");
        assert_eq!(again.header, req.header);
        assert_eq!(again.signed_bytes(), signed);
        assert_eq!(again.verify(&verifying), ok);
    }
    if let Ok(body) = RequestBody::decode(data) {
        let again = RequestBody::decode(&body.encode()).expect("a decoded body re-encodes");
        assert_eq!(again, body);
        let _ = keys::parse_reply_key(&body.reply_key);
    }
}

/// Key and PEM parsing: registry public keys, client and server key files,
/// the server key a client fetches, reply keys, and the v1 PEM form.
pub(super) fn keys(data: &[u8]) {
    let _ = keys::parse_reply_key(data);
    let _ = crypto::Encrypter::from_spki_der(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = keys::parse_public_key(text) {
        let line = keys::public_line(&key);
        assert_eq!(keys::parse_public_key(&line).expect("own line parses"), key);
    }
    if let Ok(key) = ClientKey::from_pem(text) {
        let line = key.public_line();
        assert!(keys::parse_public_key(&line).is_ok());
    }
    if let Ok(key) = ServerPublicKey::from_pem(text) {
        assert!(key.fingerprint.starts_with("sha256:"));
    }
    if let Ok(key) = ServerKey::from_pem(text) {
        let public = ServerPublicKey::from_pem(key.public_pem()).expect("own public key parses");
        assert_eq!(public.fingerprint, key.fingerprint());
    }
    let _ = v1::wire::parse_public_key_pem(text);
}

/// Configuration: the server's TOML (with the registry built from it), the
/// original registry's YAML import, and the dotenv, JSON and TOML secret
/// file formats.
pub(super) fn config(data: &[u8]) {
    let _ = source::dotenv::parse_dotenv(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(checked) = ServerConfig::from_toml_str(text) {
        assert_eq!(
            checked.registry.len(),
            checked.config.clients.len(),
            "every configured client is registered"
        );
    }
    if let Ok(clients) = v1::import::import_yaml(text, &["10.0.0.0/8".to_owned()]) {
        // What `locket import-registry` prints must pass `locket check`.
        let mut root = toml::Table::new();
        root.insert("clients".into(), toml::Value::Table(clients));
        let toml = format!(
            "[[sources]]\ntype = \"env\"\nprefix = \"APP_\"\n\n{}",
            toml::to_string(&root).expect("imported registry serialises")
        );
        ServerConfig::from_toml_str(&toml).expect("an imported registry is a valid config");
    }
    let _ = source::file::parse_json(text);
    let _ = source::file::parse_toml(text);
}

/// The client opening an answer: the JSON envelope, the RSA unwrap with the
/// reply key and the AEAD open (for the sealed seeds), then the plaintext
/// answer decoder directly.
pub(super) fn answer(data: &[u8]) {
    if let Ok(answer) = protocol::open_answer(data, reply_key(), &answer_header()) {
        check_answer(&answer);
    }
    if let Ok(answer) = Answer::decode(data) {
        check_answer(&answer);
    }
}

fn check_answer(answer: &Answer) {
    let refs: Vec<(&str, &locket::secret::SecretValue)> = answer
        .secrets
        .iter()
        .map(|(n, v)| (n.as_str(), v))
        .collect();
    let plain = protocol::encode_answer(&refs, &answer.missing);
    let again = Answer::decode(&plain).expect("a decoded answer re-encodes");
    assert_eq!(&again, answer);
}

/// Values that exercise every escaping rule of the template formats and
/// encoders: quotes, backslashes, newlines, a control character, `$`.
const TRICKY: &[&str] = &[
    "",
    "plain",
    "a\"b\\c\nd'e",
    "x\u{1}y $HOME `id`",
    "line one\nline two",
];

/// Templates: the parser, then rendering with every name the template
/// uses. A template that names secrets fails, naming one, when they are
/// missing; with them it renders or refuses a value its format cannot hold,
/// and never panics.
pub(super) fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = Template::parse("fuzz", text) else {
        return;
    };
    let names: Vec<String> = t.names().iter().map(|n| (*n).to_owned()).collect();
    let empty = t.render(&SecretSet::new());
    assert_eq!(
        empty.is_ok(),
        names.is_empty(),
        "missing names fail, only those"
    );
    for value in TRICKY {
        let set: SecretSet = names
            .iter()
            .map(|n| (n.clone(), SecretValue::from(*value)))
            .collect();
        if let Ok(out) = t.render(&set) {
            // Text without a placeholder or a `{{ "{{" }}` literal renders
            // as itself. (A first version asserted that no output of a
            // template without names holds `{{`: the literal makes one;
            // regressions/template/ keeps that input.)
            if names.is_empty() && !text.contains("{{") {
                assert_eq!(out.as_str(), text, "literal text renders as itself");
            }
        }
    }
}

/// The env-file encoders, on a set made from the input (records split by
/// 0x1e, name and value by 0x1f): dotenv reads back exactly through the
/// dotenv source's own parser, under the mapped variable names; JSON reads
/// back exactly; shell and systemd refuse or encode, and never panic.
pub(super) fn encoders(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let set: SecretSet = text
        .split('\u{1e}')
        .filter_map(|r| r.split_once('\u{1f}'))
        .map(|(n, v)| (n.to_owned(), SecretValue::from(v)))
        .collect();
    if let Ok(out) = output::dotenv(&set) {
        let back = source::dotenv::parse_dotenv(out.as_slice()).expect("dotenv output parses");
        let want: Vec<(String, &str)> = set
            .iter()
            .map(|(n, v)| (output::env_var_name(n), v.expose()))
            .collect();
        let got: Vec<(String, &str)> = back.iter().map(|(n, v)| (n.clone(), v.expose())).collect();
        assert_eq!(got, want, "dotenv reads back exactly");
    }
    let json = output::json(&set);
    let unique = set.names().collect::<std::collections::BTreeSet<_>>().len() == set.len();
    match serde_json::from_slice::<SecretSet>(&json) {
        Ok(back) => assert!(unique && back == set, "JSON reads back exactly"),
        Err(_) => assert!(!unique, "only a set with a name twice is refused"),
    }
    let _ = output::shell(&set);
    let _ = output::systemd_env(&set);
}

/// The v1 endpoint's body: the shape check it runs as the body arrives
/// (its verdict does not depend on where the body is split), serde's parse
/// of the original's five fields and the client key's PEM. A request serde
/// reads, written back compactly with printable ASCII fields of the
/// original's sizes, passes the shape check: it never refuses an original
/// client.
pub(super) fn v1_wire(data: &[u8]) {
    let whole = v1::body_shape([data]);
    if !data.is_empty() {
        let cut = usize::from(data[0]) % data.len();
        let (a, b) = data.split_at(cut);
        assert_eq!(
            v1::body_shape([a, b]).is_ok(),
            whole.is_ok(),
            "split at {cut}: {whole:?}"
        );
    }
    let Ok(req) = serde_json::from_slice::<v1::wire::Request>(data) else {
        return;
    };
    let _ = v1::wire::parse_public_key_pem(&req.client_pubkey);
    let _ = v1::wire::signed_string("name", &req.client_pubkey, req.timestamp, &req.nonce);
    let fields = [&req.payload, &req.signature, &req.client_pubkey, &req.nonce];
    let original_like = fields
        .iter()
        .all(|f| f.len() <= 4096 && f.bytes().all(|b| (0x20..0x7f).contains(&b)));
    if original_like {
        let compact = serde_json::to_vec(&req).expect("serialises");
        assert!(
            v1::body_shape([compact.as_slice()]).is_ok(),
            "an original client's body is refused: {:?}",
            v1::body_shape([compact.as_slice()])
        );
    }
}

/// Valid inputs for each target, from which the committed seed corpus was
/// written (`cargo run --manifest-path tests/fuzz/Cargo.toml --bin write-seeds`).
pub(super) fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let server = ServerKey::from_pem(include_str!("reply-key.pem")).expect("example server key");
    let public = ServerPublicKey::from_pem(server.public_pem()).expect("public");
    let header = Header {
        client: "fuzz".into(),
        server_fingerprint: server.fingerprint().into(),
        timestamp: 1_700_000_000,
        nonce: [3; protocol::NONCE_LEN],
        instance: None,
    };
    for (i, names) in [
        vec![],
        vec!["DB_PASSWORD".to_owned()],
        vec!["a/b".into(), "c".into()],
    ]
    .into_iter()
    .enumerate()
    {
        let body = RequestBody {
            names,
            reply_key: reply_key().spki_der().to_vec(),
        };
        let req = Request::seal(header.clone(), &body, &public, client_key()).expect("seal");
        out.push(("request", format!("sealed-{i}"), req.encode()));
        out.push(("request", format!("body-{i}"), body.encode().to_vec()));
    }
    out.push((
        "keys",
        "ed25519-line".into(),
        client_key().public_line().into_bytes(),
    ));
    out.push((
        "keys",
        "client-pem".into(),
        include_bytes!("../../examples/demo.key").to_vec(),
    ));
    out.push((
        "keys",
        "server-public".into(),
        server.public_pem().as_bytes().to_vec(),
    ));
    out.push(("keys", "reply-der".into(), reply_key().spki_der().to_vec()));
    out.push((
        "keys",
        "server-private".into(),
        include_bytes!("reply-key.pem").to_vec(),
    ));
    out.push((
        "config",
        "server-toml".into(),
        include_bytes!("../../examples/server.toml").to_vec(),
    ));
    out.push((
        "config",
        "dotenv".into(),
        include_bytes!("../../examples/secrets.env").to_vec(),
    ));
    out.push((
        "config",
        "registry-yaml".into(),
        format!(
            "- name: Billing\n  keypub: {}\n",
            client_key().public_line()
        )
        .into_bytes(),
    ));
    out.push((
        "config",
        "json".into(),
        br#"{"A": "1", "B": {"C": "2"}}"#.to_vec(),
    ));
    let values = [
        (
            "DB_PASSWORD",
            locket::secret::SecretValue::from("hunter2".to_owned()),
        ),
        ("EMPTY", locket::secret::SecretValue::from(String::new())),
    ];
    let refs: Vec<(&str, &locket::secret::SecretValue)> =
        values.iter().map(|(n, v)| (*n, v)).collect();
    for (i, missing) in [vec![], vec!["GONE".to_owned()]].into_iter().enumerate() {
        let plain = protocol::encode_answer(&refs, &missing);
        out.push(("answer", format!("plain-{i}"), plain.to_vec()));
        let reply = keys::parse_reply_key(reply_key().spki_der()).expect("reply key");
        let wire = protocol::seal_answer(plain, &reply, &answer_header()).expect("seal answer");
        out.push((
            "answer",
            format!("sealed-{i}"),
            serde_json::to_vec(&wire).expect("json"),
        ));
    }
    for (i, t) in [
        "[db]\npassword = {{ DB_PASSWORD }}\n",
        "{{ \"{{\" }} literal, {{ A | json }} {{ B | yaml }} {{ C | shell }}\n",
        "x = {{ V | ini }}\ny = {{ W | line }}\n",
        "no placeholder at all\n",
    ]
    .into_iter()
    .enumerate()
    {
        out.push(("template", format!("template-{i}"), t.as_bytes().to_vec()));
    }
    out.push((
        "encoders",
        "pairs".into(),
        "DB_PASSWORD\u{1f}hunter2\u{1e}db/url\u{1f}postgres://x\u{1e}QUOTE\u{1f}it's \"q\" $HOME\u{1e}NL\u{1f}a\nb"
            .as_bytes()
            .to_vec(),
    ));
    for (name, pairs) in [
        ("empty", ""),
        ("twice", "A\u{1f}1\u{1e}A\u{1f}2"),
        ("refused", "N\u{1f}a\u{0}b\u{1e}T\u{1f}a'b`id`"),
    ] {
        out.push(("encoders", name.into(), pairs.as_bytes().to_vec()));
    }
    for (name, body) in [
        (
            "indented",
            "{\n  \"payload\": \"QUJD\",\n  \"timestamp\": -5\n}\n",
        ),
        ("nested", r#"{"payload":{"a":1}}"#),
        ("not-ascii", "{\"payload\":\"\u{e9}\"}"),
    ] {
        out.push(("v1_wire", name.into(), body.as_bytes().to_vec()));
    }
    out.push((
        "v1_wire",
        "original-request".into(),
        format!(
            r#"{{"payload":"{}","signature":"{}","client_pubkey":"{}","timestamp":1700000000,"nonce":"bm9uY2U="}}"#,
            "QUJD".repeat(86),
            "U0lH".repeat(86),
            v1::wire::public_key_pem(reply_key().spki_der()).trim_end().replace('\n', "\\n")
        )
        .into_bytes(),
    ));
    out
}
