//! The cryptographic primitives of the protocol, each in one small function.
//!
//! * RSA-OAEP with SHA-256 (hash and MGF1) and a protocol label, used only to
//!   wrap a fresh 256-bit AEAD key ([`wrap_key`], [`unwrap_key`]).
//! * AES-256-GCM with an all-zero 96-bit nonce ([`seal`], [`open`]). The zero
//!   nonce is safe because every AEAD key is random and used for exactly one
//!   message, which the protocol guarantees by construction.
//! * SHA-256 fingerprints of SPKI DER ([`fingerprint`]).
//!
//! Private-key RSA operations use `rsa` 0.10, which blinds them and runs on
//! constant-time big integers (the fix for RUSTSEC-2023-0071).

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rsa::{Oaep, PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::SecretBytes;

/// Length of an AEAD key in bytes.
pub const AEAD_KEY_LEN: usize = 32;
/// Length of the AES-GCM tag appended to every ciphertext.
pub const AEAD_TAG_LEN: usize = 16;

/// A failure of a cryptographic operation. Deliberately without detail: the
/// caller knows which operation it attempted and says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the operating system random number generator failed")]
    Random,
    #[error("RSA-OAEP encryption failed (is the public key at least 2048 bits?)")]
    Wrap,
    #[error("RSA-OAEP decryption failed")]
    Unwrap,
    #[error("AEAD encryption failed")]
    Seal,
    #[error("AEAD authentication failed")]
    Open,
}

/// Fills a new buffer with `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|_| CryptoError::Random)?;
    Ok(buf)
}

/// A fresh AEAD key, wiped on drop.
pub fn new_aead_key() -> Result<Zeroizing<[u8; AEAD_KEY_LEN]>, CryptoError> {
    Ok(Zeroizing::new(random_bytes::<AEAD_KEY_LEN>()?))
}

/// `sha256:` followed by the lowercase hex SHA-256 of `spki_der`.
pub fn fingerprint(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

/// Encrypts `key` to `public` with RSA-OAEP-SHA256 under `label`.
pub fn wrap_key(public: &PublicKey, label: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
    public
        .encrypt(
            &mut getrandom::SysRng,
            Oaep::<Sha256>::new_with_label(label.to_vec()),
            key,
        )
        .map_err(|_| CryptoError::Wrap)
}

/// Decrypts an AEAD key wrapped by [`wrap_key`]. Fails unless the plaintext is
/// exactly [`AEAD_KEY_LEN`] bytes.
pub fn unwrap_key(
    private: &PrivateKey,
    label: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; AEAD_KEY_LEN]>, CryptoError> {
    let plain = Zeroizing::new(
        private
            .decrypt(Oaep::<Sha256>::new_with_label(label.to_vec()), wrapped)
            .map_err(|_| CryptoError::Unwrap)?,
    );
    let mut key = Zeroizing::new([0u8; AEAD_KEY_LEN]);
    if plain.len() != AEAD_KEY_LEN {
        return Err(CryptoError::Unwrap);
    }
    key.copy_from_slice(&plain);
    Ok(key)
}

/// Encrypts `plaintext` in place (it becomes ciphertext || tag).
///
/// The buffer is grown once, before encryption, so no copy of the plaintext
/// is left behind in a freed allocation.
pub fn seal(
    key: &[u8; AEAD_KEY_LEN],
    aad: &[u8],
    plaintext: &mut SecretBytes,
) -> Result<(), CryptoError> {
    let cipher = Aes256Gcm::new(key.into());
    let len = plaintext.len();
    plaintext.reserve_exact(AEAD_TAG_LEN);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::default(), aad, plaintext[..len].as_mut().into())
        .map_err(|_| CryptoError::Seal)?;
    plaintext.extend_from_slice(tag.as_slice());
    Ok(())
}

/// Decrypts `ciphertext || tag`, returning the plaintext in zeroizing memory.
pub fn open(
    key: &[u8; AEAD_KEY_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes, CryptoError> {
    let cipher = Aes256Gcm::new(key.into());
    let body_len = ciphertext
        .len()
        .checked_sub(AEAD_TAG_LEN)
        .ok_or(CryptoError::Open)?;
    let (body, tag) = ciphertext.split_at(body_len);
    let mut out = SecretBytes::new(body.to_vec());
    cipher
        .decrypt_inout_detached(
            &Nonce::default(),
            aad,
            out.as_mut_slice().into(),
            tag.try_into().map_err(|_| CryptoError::Open)?,
        )
        .map_err(|_| CryptoError::Open)?;
    Ok(out)
}
