//! The original locket's wire format (v1), spoken only when `[v1] enable =
//! true`, so that existing Go clients can move over unchanged. Everything
//! here follows `../shared/reference/original-locket.md` (summarised in
//! `docs/protocol.md`, "Protocol v1").
//!
//! * RSA public keys travel as PEM with block type `RSA PUBLIC KEY` whose
//!   bytes are PKIX SubjectPublicKeyInfo DER (not PKCS#1).
//! * `payload`: base64 of RSA-OAEP-SHA256 (empty label) of the secret name
//!   to the server key; the answer is the value sealed the same way to the
//!   client's key: one RSA block, so at most `k - 66` bytes (190 for 2048).
//! * `signature`: ed25519 over `name \n client_pubkey \n timestamp \n nonce`.
//!
//! Both RSA operations run in AWS-LC ([`crate::crypto`]), like v2's: v1
//! decrypts before it authenticates (as the original did), so its private-key
//! operation is the one an unauthenticated caller can reach and time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Decrypter, Encrypter};
use crate::secret::SecretBytes;

/// v1 uses OAEP with an empty label.
const LABEL: &[u8] = b"";

/// Largest v1 request body.
pub const MAX_BODY: u64 = 1024 * 1024;

/// The JSON body of a v1 `POST`.
#[derive(Debug, Deserialize, Serialize)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct Request {
    pub payload: String,
    pub signature: String,
    pub client_pubkey: String,
    pub timestamp: i64,
    pub nonce: String,
}

/// The JSON body of a v1 answer.
#[derive(Debug, Deserialize, Serialize)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct Answer {
    pub payload: String,
}

/// What is wrong with a v1 request's fields. Never quotes a field: the
/// payload is a secret's name sealed to the server, the key a client's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum WireError {
    #[error("client_pubkey is not a PEM public key")]
    NotPem,
    #[error("client_pubkey PEM is not base64")]
    KeyBase64,
    #[error("client_pubkey is not an RSA SPKI key of 2048 to 8192 bits")]
    Key,
    #[error("payload is not base64")]
    PayloadBase64,
    #[error("payload does not decrypt with the server key")]
    Undecryptable,
    #[error("RSA-OAEP to the client key failed: {0}")]
    Seal(crypto::CryptoError),
}

/// PEM `RSA PUBLIC KEY` around SPKI DER (`spki_der`), as the original
/// writes it.
pub fn public_key_pem(spki_der: &[u8]) -> String {
    let b64 = B64.encode(spki_der);
    let mut out = String::from("-----BEGIN RSA PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END RSA PUBLIC KEY-----\n");
    out
}

/// Parses a client's RSA public key in the original's form (or a plain
/// SPKI `PUBLIC KEY`), 2048 to 8192 bits.
pub fn parse_public_key_pem(pem: &str) -> Result<Encrypter, WireError> {
    let body = ["RSA PUBLIC KEY", "PUBLIC KEY"]
        .iter()
        .find_map(|label| {
            let begin = format!("-----BEGIN {label}-----");
            let end = format!("-----END {label}-----");
            let start = pem.find(&begin)? + begin.len();
            let stop = start + pem[start..].find(&end)?;
            Some(pem[start..stop].split_whitespace().collect::<String>())
        })
        .ok_or(WireError::NotPem)?;
    let der = B64.decode(body).map_err(|_| WireError::KeyBase64)?;
    // AWS-LC refuses moduli outside 2048..=8192 bits itself.
    Encrypter::from_spki_der(&der).map_err(|_| WireError::Key)
}

/// The string the client signs.
pub fn signed_string(name: &str, client_pubkey: &str, timestamp: i64, nonce: &str) -> String {
    format!("{name}\n{client_pubkey}\n{timestamp}\n{nonce}")
}

/// Most plaintext bytes one OAEP-SHA256 block to `key` can carry.
pub fn max_plaintext(key: &Encrypter) -> usize {
    crypto::oaep_max_plaintext(key)
}

/// Decrypts a payload (the secret name) with the server key.
pub fn open_payload(key: &Decrypter, payload_b64: &str) -> Result<SecretBytes, WireError> {
    let ct = B64
        .decode(payload_b64)
        .map_err(|_| WireError::PayloadBase64)?;
    crypto::oaep_decrypt(key, LABEL, &ct).map_err(|_| WireError::Undecryptable)
}

/// Encrypts a value to the client's key.
pub fn seal_value(key: &Encrypter, value: &[u8]) -> Result<String, WireError> {
    crypto::oaep_encrypt(key, LABEL, value)
        .map(|ct| B64.encode(ct))
        .map_err(WireError::Seal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePublicKey as _;

    /// The client's reply key must be 2048 to 8192 bits, in either PEM form.
    #[test]
    fn client_keys_below_2048_bits_are_refused() {
        for (bits, ok) in [(1024, false), (2048, true)] {
            let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits).unwrap();
            let der = key.to_public_key().to_public_key_der().unwrap();
            let pem = public_key_pem(der.as_bytes());
            let plain = pem.replace("RSA PUBLIC KEY", "PUBLIC KEY");
            for text in [&pem, &plain] {
                match parse_public_key_pem(text) {
                    Ok(k) => assert!(ok && k.bits() == bits, "{bits} bits accepted"),
                    Err(e) => assert!(!ok, "{bits} bits refused: {e}"),
                }
            }
        }
    }
}
