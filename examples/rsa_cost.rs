//! Prints the cost of the RSA operations locket performs (release build):
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
}
