//! Prints the cost of the RSA operations locket performs, and of the X25519
//! reply key that replaced RSA for answers (release build):
//! `cargo run --release --example rsa_cost`.
//!
//! For comparison it also times the same OAEP decryption in the `rsa` crate,
//! which locket used before moving the OAEP operations to AWS-LC.
use std::time::Instant;

use rsa::Oaep;
use sha2::Sha256;

fn main() {
    for bits in [2048usize, 3072] {
        let t = Instant::now();
        let key = locket::keys::ServerKey::generate(bits).expect("keygen");
        let keygen = t.elapsed();
        let pubkey = locket::keys::ServerPublicKey::from_pem(key.public_pem()).expect("pem");
        let n = 200;
        let t = Instant::now();
        let mut wrapped = Vec::new();
        for _ in 0..n {
            wrapped = locket::crypto::wrap_key(&pubkey.key, b"l", &[1u8; 32]).expect("wrap");
        }
        let wrap = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            locket::crypto::unwrap_key(key.decrypter(), b"l", &wrapped).expect("unwrap");
        }
        let unwrap = t.elapsed() / n;
        let m = 20;
        let rsa_key = {
            use rsa::pkcs8::DecodePrivateKey as _;
            rsa::PrivateKey::from_pkcs8_pem(&key.to_pkcs8_pem().expect("pem")).expect("rsa parse")
        };
        let t = Instant::now();
        for _ in 0..m {
            let plain = rsa_key
                .decrypt(Oaep::<Sha256>::new_with_label(b"l".to_vec()), &wrapped)
                .expect("rsa crate decrypt");
            assert_eq!(plain.len(), 32);
        }
        let rsa_crate = t.elapsed() / m;
        println!(
            "RSA-{bits}: keygen {keygen:?}, OAEP wrap {wrap:?}, OAEP unwrap {unwrap:?} \
             (the rsa crate's unwrap: {rsa_crate:?})"
        );
    }
    // An X25519 reply key: made by the client, sealed to by the server
    // (HPKE), opened by the client; a 600-byte answer.
    let n = 2000;
    let t = Instant::now();
    let mut reply = None;
    for _ in 0..n {
        reply = Some(locket::keys::ReplyKey::generate_x25519().expect("x25519"));
    }
    let keygen = t.elapsed() / n;
    let reply = reply.expect("a key");
    let public = match locket::keys::parse_reply_key(reply.spki_der()).expect("spki") {
        locket::keys::ReplyPublicKey::X25519(k) => k,
        locket::keys::ReplyPublicKey::Rsa(_) => unreachable!("an X25519 key"),
    };
    let answer = [7u8; 600];
    let t = Instant::now();
    let mut sealed = (Vec::new(), Vec::new());
    for _ in 0..n {
        sealed = locket::crypto::hpke_seal(&public, b"info", b"aad", &answer).expect("seal");
    }
    let seal = t.elapsed() / n;
    let locket::keys::ReplyPrivateKey::X25519(private) = reply.private() else {
        unreachable!("an X25519 key")
    };
    let t = Instant::now();
    for _ in 0..n {
        locket::crypto::hpke_open(private, &sealed.0, b"info", b"aad", &sealed.1).expect("open");
    }
    let open = t.elapsed() / n;
    println!(
        "X25519 reply key: keygen {keygen:?}, HPKE seal (server) {seal:?}, HPKE open (client) {open:?}"
    );
}
