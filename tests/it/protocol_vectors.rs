//! Checks the test vectors in docs/protocol.md against the implementation:
//! every output is recomputed from the inputs written in the doc.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signature;
use locket::keys::{ClientKey, ReplyKey, ServerKey};
use locket::protocol::{self, Answer, Header, Request, RequestBody};
use locket::secret::SecretValue;

struct Doc {
    v: HashMap<String, String>,
    pem: String,
}

fn doc() -> Doc {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let mut v = HashMap::new();
    let mut pem = String::new();
    let mut block: Option<&str> = None;
    for line in text.lines() {
        match (block, line) {
            (None, "```vectors") => block = Some("vectors"),
            (None, "```pem") => block = Some("pem"),
            (Some(_), "```") => block = None,
            (Some("vectors"), l) => {
                let (k, val) = l.split_once(" = ").expect("key = value");
                assert!(
                    v.insert(k.to_owned(), val.to_owned()).is_none(),
                    "duplicate vector {k}"
                );
            }
            (Some("pem"), l) => {
                pem.push_str(l);
                pem.push('\n');
            }
            _ => {}
        }
    }
    assert!(
        v.len() >= 25,
        "the doc's vectors were not found ({} keys)",
        v.len()
    );
    Doc { v, pem }
}

impl Doc {
    fn s(&self, k: &str) -> &str {
        self.v
            .get(k)
            .unwrap_or_else(|| panic!("vector {k} missing from docs/protocol.md"))
    }
    fn hex(&self, k: &str) -> Vec<u8> {
        hex::decode(self.s(k)).unwrap()
    }
    fn header(&self) -> Header {
        Header {
            client: self.s("client").to_owned(),
            server_fingerprint: self.s("server_fingerprint").to_owned(),
            timestamp: self.s("timestamp").parse().unwrap(),
            nonce: self.hex("nonce").try_into().unwrap(),
            instance: None,
        }
    }
}

#[test]
fn canonical_bytes_signature_and_aad() {
    let d = doc();
    let seed: [u8; 32] = d.hex("client_seed").try_into().unwrap();
    let key = ClientKey::from_seed(&seed);
    assert_eq!(key.public_line(), d.s("client_public"));
    let header = d.header();
    let signed = header.signed_bytes(&d.hex("wrapped_key"), &d.hex("ciphertext"));
    assert_eq!(hex::encode(&signed), d.s("signed_bytes"));
    let sig = Signature::from_slice(&d.hex("signature")).unwrap();
    assert_eq!(key.sign(&signed), sig, "ed25519 is deterministic");
    let public = locket::keys::parse_public_key(d.s("client_public")).unwrap();
    assert!(public.verify_strict(&signed, &sig).is_ok());
    let mut bent = signed.clone();
    bent[40] ^= 1;
    assert!(public.verify_strict(&bent, &sig).is_err());
    assert_eq!(hex::encode(header.request_aad()), d.s("request_aad"));
    assert_eq!(hex::encode(header.response_aad()), d.s("response_aad"));

    // Bound to an instance (version 3): the version byte and the instance
    // change every MAC'd string, so a bound request cannot pass for an
    // unbound one or for one bound elsewhere.
    let bound = Header {
        instance: Some(d.hex("instance").try_into().unwrap()),
        ..header
    };
    let bound_signed = bound.signed_bytes(&d.hex("wrapped_key"), &d.hex("ciphertext"));
    assert_eq!(hex::encode(&bound_signed), d.s("bound_signed_bytes"));
    let bound_sig = Signature::from_slice(&d.hex("bound_signature")).unwrap();
    assert_eq!(key.sign(&bound_signed), bound_sig);
    assert!(public.verify_strict(&signed, &bound_sig).is_err());
    assert_eq!(hex::encode(bound.request_aad()), d.s("bound_request_aad"));
    assert_eq!(hex::encode(bound.response_aad()), d.s("bound_response_aad"));
}

#[test]
fn bound_requests_carry_version_3_and_their_instance_on_the_wire() {
    let d = doc();
    let server = ServerKey::from_pem(&d.pem).unwrap();
    let public = locket::keys::ServerPublicKey::from_pem(server.public_pem()).unwrap();
    let key = ClientKey::from_seed(&d.hex("client_seed").try_into().unwrap());
    let instance: [u8; 16] = d.hex("instance").try_into().unwrap();
    let header = Header {
        instance: Some(instance),
        server_fingerprint: server.fingerprint().to_owned(),
        ..d.header()
    };
    let body = RequestBody {
        names: vec!["A".into()],
        reply_key: ReplyKey::from_pem(&d.pem).unwrap().spki_der().to_vec(),
    };
    let request = Request::seal(header, &body, &public, &key).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&request.encode()).unwrap();
    assert_eq!(json["version"], 3);
    assert_eq!(json["instance"], B64.encode(instance));
    let decoded = Request::decode(&request.encode()).unwrap();
    assert_eq!(decoded.header.instance, Some(instance));
    assert_eq!(decoded.open(&server).unwrap(), body);
    // Version and instance go together: each without the other is refused.
    for (version, instance) in [(3, None), (2, Some(B64.encode(instance)))] {
        let mut bent = json.clone();
        bent["version"] = version.into();
        match instance {
            Some(i) => bent["instance"] = i.into(),
            None => {
                bent.as_object_mut().unwrap().remove("instance");
            }
        }
        let err = Request::decode(&serde_json::to_vec(&bent).unwrap()).unwrap_err();
        assert!(err.to_string().contains("instance"), "{err}");
    }
}

#[test]
fn body_encodings_and_aead() {
    let d = doc();
    let body = RequestBody {
        names: d.s("body_names").split(',').map(str::to_owned).collect(),
        reply_key: d.hex("body_reply_key"),
    };
    let encoded = body.encode();
    assert_eq!(hex::encode(encoded.as_slice()), d.s("request_body"));
    assert_eq!(RequestBody::decode(&encoded).unwrap(), body);

    let (name, value) = d.s("answer_secret").split_once('=').unwrap();
    let value = SecretValue::from(value);
    let missing = vec![d.s("answer_missing").to_owned()];
    let answer = protocol::encode_answer(&[(name, &value)], &missing);
    assert_eq!(hex::encode(answer.as_slice()), d.s("answer_body"));
    let decoded = Answer::decode(&answer).unwrap();
    assert_eq!(
        decoded.secrets,
        locket::secret_set::SecretSet::from(vec![(name.to_owned(), value)])
    );
    assert_eq!(decoded.missing, missing);

    let key: [u8; 32] = d.hex("aead_key").try_into().unwrap();
    let aad = d.header().request_aad();
    let mut sealed = body.encode();
    locket::crypto::seal(&key, &aad, &mut sealed).unwrap();
    assert_eq!(
        hex::encode(sealed.as_slice()),
        d.s("aead_request_body_sealed")
    );
    let opened = locket::crypto::open(&key, &aad, &d.hex("aead_request_body_sealed")).unwrap();
    assert_eq!(opened.as_slice(), d.hex("request_body"));
}

#[test]
fn complete_request_and_answer_open_with_the_documented_key() {
    let d = doc();
    let server = ServerKey::from_pem(&d.pem).expect("the doc's PEM");
    assert_eq!(server.fingerprint(), d.s("full_fingerprint"));

    let request = Request::decode(d.s("full_request").as_bytes()).unwrap();
    assert_eq!(request.header.server_fingerprint, server.fingerprint());
    let public = locket::keys::parse_public_key(d.s("client_public")).unwrap();
    assert!(
        request.verify(&public),
        "the documented request is signed by the documented client key"
    );
    let body = request.open(&server).unwrap();
    assert_eq!(body.names, vec![d.s("full_request_names").to_owned()]);
    let reply = ReplyKey::from_pem(&d.pem).unwrap();
    assert_eq!(body.reply_key, reply.spki_der());

    let answer =
        protocol::open_answer(d.s("full_answer").as_bytes(), &reply, &request.header).unwrap();
    let expected = String::from_utf8(B64.decode(d.s("full_answer_value")).unwrap()).unwrap();
    assert_eq!(answer.secrets.len(), 1);
    assert_eq!(answer.secrets[0].1.expose(), expected);
    // Bound to its request: another nonce does not open it.
    let mut other = request.header.clone();
    other.nonce[15] ^= 0xff;
    assert!(protocol::open_answer(d.s("full_answer").as_bytes(), &reply, &other).is_err());

    // The same answer sealed with HPKE to the documented X25519 reply key.
    let x25519 =
        ReplyKey::from_x25519_private(&d.hex("x25519_reply_private").try_into().unwrap()).unwrap();
    assert_eq!(hex::encode(x25519.spki_der()), d.s("x25519_reply_spki"));
    assert!(matches!(
        locket::keys::parse_reply_key(x25519.spki_der()).unwrap(),
        locket::keys::ReplyPublicKey::X25519(_)
    ));
    // It answers the request of the first block (that header).
    let header = d.header();
    let answer = protocol::open_answer(d.s("x25519_answer").as_bytes(), &x25519, &header).unwrap();
    assert_eq!(answer.secrets[0].1.expose(), expected);
    let mut other = header.clone();
    other.nonce[15] ^= 0xff;
    assert!(protocol::open_answer(d.s("x25519_answer").as_bytes(), &x25519, &other).is_err());
    assert!(
        protocol::open_answer(d.s("x25519_answer").as_bytes(), &reply, &header).is_err(),
        "not with the RSA reply key"
    );
}
