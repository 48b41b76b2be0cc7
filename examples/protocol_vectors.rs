//! Prints the test vectors of docs/protocol.md:
//! `cargo run --example protocol_vectors`. The doc holds their output, and
//! `tests/it/protocol_vectors.rs` recomputes every value from the doc's inputs.
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use locket::keys::{ClientKey, ReplyKey, ReplyPublicKey, ServerKey, ServerPublicKey};
use locket::protocol::{self, Header, Request, RequestBody};
use locket::secret::SecretValue;

fn main() {
    let seed = [0x01u8; 32];
    let client = ClientKey::from_seed(&seed);
    let header = Header {
        client: "demo".into(),
        server_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        timestamp: 1_767_225_600,
        nonce: core::array::from_fn(|i| i as u8),
        instance: None,
    };
    let wrapped = [0x11u8; 4];
    let ct = [0x22u8; 3];
    let signed = header.signed_bytes(&wrapped, &ct);
    let body = RequestBody {
        names: vec!["A".into(), "DB_PASSWORD".into()],
        reply_key: vec![0x30, 0x00],
    };
    let one = SecretValue::from("1");
    let answer = protocol::encode_answer(&[("A", &one)], &["B".to_string()]);
    let aead_key = [0x42u8; 32];
    let mut sealed = body.encode();
    locket::crypto::seal(&aead_key, &header.request_aad(), &mut sealed).unwrap();
    println!("```vectors");
    println!("client_seed = {}", hex::encode(seed));
    println!("client_public = {}", client.public_line());
    println!("client = {}", header.client);
    println!("server_fingerprint = {}", header.server_fingerprint);
    println!("timestamp = {}", header.timestamp);
    println!("nonce = {}", hex::encode(header.nonce));
    println!("wrapped_key = {}", hex::encode(wrapped));
    println!("ciphertext = {}", hex::encode(ct));
    println!("signed_bytes = {}", hex::encode(&signed));
    println!(
        "signature = {}",
        hex::encode(client.sign(&signed).to_bytes())
    );
    println!("request_aad = {}", hex::encode(header.request_aad()));
    println!("response_aad = {}", hex::encode(header.response_aad()));
    println!("body_names = A,DB_PASSWORD");
    println!("body_reply_key = 3000");
    println!("request_body = {}", hex::encode(body.encode().as_slice()));
    println!("answer_secret = A=1");
    println!("answer_missing = B");
    println!("answer_body = {}", hex::encode(answer.as_slice()));
    println!("aead_key = {}", hex::encode(aead_key));
    println!(
        "aead_request_body_sealed = {}",
        hex::encode(sealed.as_slice())
    );
    // The same header bound to a server instance (version 3).
    let bound = Header {
        instance: Some(core::array::from_fn(|i| 0xf0 | i as u8)),
        ..header.clone()
    };
    let bound_signed = bound.signed_bytes(&wrapped, &ct);
    println!("instance = {}", hex::encode(bound.instance.unwrap()));
    println!("bound_signed_bytes = {}", hex::encode(&bound_signed));
    println!(
        "bound_signature = {}",
        hex::encode(client.sign(&bound_signed).to_bytes())
    );
    println!("bound_request_aad = {}", hex::encode(bound.request_aad()));
    println!("bound_response_aad = {}", hex::encode(bound.response_aad()));
    println!("```");

    // A complete request, sealed to a 2048-bit key printed here (test only).
    let server = ServerKey::generate(2048).unwrap();
    let public = ServerPublicKey::from_pem(server.public_pem()).unwrap();
    let private_pem = server.to_pkcs8_pem().unwrap();
    let reply = ReplyKey::from_pem(&private_pem).unwrap();
    let header = Header {
        server_fingerprint: server.fingerprint().to_owned(),
        ..header
    };
    let body = RequestBody {
        names: vec!["DB_PASSWORD".into()],
        reply_key: reply.spki_der().to_vec(),
    };
    let request = Request::seal(header.clone(), &body, &public, &client).unwrap();
    let sealed_answer = protocol::seal_answer(
        protocol::encode_answer(&[("DB_PASSWORD", &SecretValue::from("s3cret\nvalue"))], &[]),
        &ReplyPublicKey::Rsa(public.key.clone()),
        &header,
    )
    .unwrap();
    // The same answer sealed with HPKE to an X25519 reply key, for the
    // request of the first block (its header).
    let x25519_private = [0x5au8; 32];
    let x25519 = ReplyKey::from_x25519_private(&x25519_private).unwrap();
    let x25519_answer = protocol::seal_answer(
        protocol::encode_answer(&[("DB_PASSWORD", &SecretValue::from("s3cret\nvalue"))], &[]),
        &locket::keys::parse_reply_key(x25519.spki_der()).unwrap(),
        &Header {
            server_fingerprint: format!("sha256:{}", "ab".repeat(32)),
            ..header.clone()
        },
    )
    .unwrap();
    println!("\n```pem");
    print!("{}", private_pem.as_str());
    println!("```\n");
    println!("```vectors");
    println!("full_fingerprint = {}", server.fingerprint());
    println!(
        "full_request = {}",
        String::from_utf8(request.encode()).unwrap()
    );
    println!("full_request_names = DB_PASSWORD");
    println!(
        "full_answer = {}",
        serde_json::to_string(&sealed_answer).unwrap()
    );
    println!("full_answer_value = {}", B64.encode("s3cret\nvalue"));
    println!("x25519_reply_private = {}", hex::encode(x25519_private));
    println!("x25519_reply_spki = {}", hex::encode(x25519.spki_der()));
    println!(
        "x25519_answer = {}",
        serde_json::to_string(&x25519_answer).unwrap()
    );
    println!("```");
}
