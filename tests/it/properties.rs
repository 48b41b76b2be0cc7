//! Property tests of the protocol: round-trips for arbitrary names and
//! values, and rejection of any single-bit change to a request or answer.

use std::sync::OnceLock;

use locket::keys::{ClientKey, ReplyKey, ServerKey, ServerPublicKey};
use locket::protocol::{self, Header, Request, RequestBody};
use locket::secret::SecretValue;
use proptest::prelude::*;

fn keys() -> &'static (ServerKey, ServerPublicKey, ReplyKey) {
    static K: OnceLock<(ServerKey, ServerPublicKey, ReplyKey)> = OnceLock::new();
    K.get_or_init(|| {
        let server = ServerKey::generate(2048).unwrap();
        let public = ServerPublicKey::from_pem(server.public_pem()).unwrap();
        let reply = ReplyKey::generate().unwrap();
        (server, public, reply)
    })
}

fn header(nonce: [u8; 16]) -> Header {
    Header {
        client: "app".into(),
        server_fingerprint: keys().0.fingerprint().into(),
        timestamp: 1_767_225_600,
        nonce,
        instance: None,
    }
}

/// Secret names as the protocol allows them: 1-256 bytes, no control characters.
fn name() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,40}".prop_filter("valid", |s| locket::protocol::valid_secret_name(s))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(names in proptest::collection::vec(name(), 0..8), nonce in any::<[u8; 16]>()) {
        let (server, public, reply) = keys();
        let reply = reply.clone();
        let signer = ClientKey::from_seed(&[3; 32]);
        let body = RequestBody { names: names.clone(), reply_key: reply.spki_der().to_vec() };
        let sealed = Request::seal(header(nonce), &body, public, &signer).unwrap();
        let decoded = Request::decode(&sealed.encode()).unwrap();
        prop_assert!(decoded.verify(&signer.verifying_key()));
        prop_assert_eq!(decoded.open(server).unwrap(), body);
    }

    #[test]
    fn answers_round_trip(pairs in proptest::collection::vec((name(), any::<String>()), 0..6), nonce in any::<[u8; 16]>()) {
        let (_, _, reply) = keys();
        let reply = reply.clone();
        let values: locket::secret_set::SecretSet = pairs.iter().map(|(n, v)| (n.clone(), SecretValue::from(v.as_str()))).collect();
        let refs: Vec<(&str, &SecretValue)> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let public = locket::keys::parse_reply_key(reply.spki_der()).unwrap();
        let wire = protocol::seal_answer(protocol::encode_answer(&refs, &[]), &public, &header(nonce)).unwrap();
        let answer = protocol::open_answer(serde_json::to_string(&wire).unwrap().as_bytes(), &reply, &header(nonce)).unwrap();
        prop_assert_eq!(answer.secrets, values);
    }

    #[test]
    fn any_bit_flip_in_a_request_is_rejected(bit in any::<prop::sample::Index>(), part in 0usize..3) {
        let (server, public, reply) = keys();
        let reply = reply.clone();
        let signer = ClientKey::from_seed(&[3; 32]);
        let body = RequestBody { names: vec!["A".into(), "B".into()], reply_key: reply.spki_der().to_vec() };
        let mut r = Request::seal(header([9; 16]), &body, public, &signer).unwrap();
        let flip = |bytes: &mut [u8]| {
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
        };
        match part {
            0 => flip(&mut r.wrapped_key),
            1 => flip(&mut r.ciphertext),
            _ => flip(&mut r.header.nonce),
        }
        // The signature no longer verifies...
        prop_assert!(!r.verify(&signer.verifying_key()));
        // ...and even if it were ignored, the body would not open.
        prop_assert!(r.open(server).is_err());
        // A flipped signature bit is rejected too.
        let mut s = Request::seal(header([9; 16]), &body, public, &signer).unwrap();
        let mut sig = s.signature.to_bytes();
        flip(&mut sig);
        s.signature = ed25519_dalek::Signature::from_bytes(&sig);
        prop_assert!(!s.verify(&signer.verifying_key()));
    }

    #[test]
    fn any_bit_flip_in_an_answer_is_rejected(bit in any::<prop::sample::Index>(), in_key in any::<bool>()) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let (_, _, reply) = keys();
        let reply = reply.clone();
        let v = SecretValue::from("s3cret");
        let public = locket::keys::parse_reply_key(reply.spki_der()).unwrap();
        let mut wire = protocol::seal_answer(protocol::encode_answer(&[("A", &v)], &[]), &public, &header([5; 16])).unwrap();
        let field = if in_key { &mut wire.wrapped_key } else { &mut wire.ciphertext };
        let mut bytes = b64.decode(&*field).unwrap();
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        *field = b64.encode(bytes);
        prop_assert!(protocol::open_answer(serde_json::to_string(&wire).unwrap().as_bytes(), &reply, &header([5; 16])).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

    /// The clock check over the whole i64 range: exactly the timestamps
    /// within `skew` of `now` pass, computed without overflow.
    #[test]
    fn the_clock_check_never_wraps(now in any::<i64>(), ts in any::<i64>(), skew in 0i64..=3600) {
        let expected = (i128::from(now) - i128::from(ts)).abs() <= i128::from(skew);
        prop_assert_eq!(locket::clock::clock_ok(now, ts, skew), expected);
    }

    #[test]
    fn the_clock_check_near_now(now in 0i64..=4_102_444_800, delta in -7200i64..=7200, skew in 0i64..=3600) {
        prop_assert_eq!(locket::clock::clock_ok(now, now + delta, skew), delta.abs() <= skew);
        prop_assert!(!locket::clock::clock_ok(now, i64::MIN + now, skew));
    }
}
