//! Prints the cost of the RSA operations locket performs (release build):
//! `cargo run --release --example rsa_cost`.
use std::time::Instant;

fn main() {
    for bits in [2048usize, 3072] {
        let t = Instant::now();
        let key = locket::keys::ServerKey::generate(bits).expect("keygen");
        let keygen = t.elapsed();
        let pubkey = locket::keys::ServerPublicKey::from_pem(key.public_pem()).expect("pem");
        let t = Instant::now();
        let n = 50;
        let mut wrapped = Vec::new();
        for _ in 0..n {
            wrapped = locket::crypto::wrap_key(&pubkey.key, b"l", &[1u8; 32]).expect("wrap");
        }
        let wrap = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n {
            locket::crypto::unwrap_key(key.private(), b"l", &wrapped).expect("unwrap");
        }
        let unwrap = t.elapsed() / n;
        println!("RSA-{bits}: keygen {keygen:?}, OAEP wrap {wrap:?}, OAEP unwrap {unwrap:?}");
    }
}
