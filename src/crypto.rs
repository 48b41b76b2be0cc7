//! The cryptographic primitives of the protocol, each in one small function.
//!
//! * RSA-OAEP with SHA-256 (hash and MGF1) and a protocol label, used in v2
//!   only to wrap a fresh 256-bit AEAD key ([`wrap_key`], [`unwrap_key`]);
//!   protocol v1 encrypts names and values with it directly
//!   ([`oaep_encrypt`], [`oaep_decrypt`], empty label).
//! * AES-256-GCM with an all-zero 96-bit nonce ([`seal`], [`open`]). The zero
//!   nonce is safe because every AEAD key is random and used for exactly one
//!   message, which the protocol guarantees by construction.
//! * SHA-256 fingerprints of SPKI DER ([`fingerprint`]).
//! * HPKE (RFC 9180, base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//!   AES-256-GCM) for answers to an X25519 reply key ([`hpke_seal`],
//!   [`hpke_open`]): rustls's implementation over AWS-LC, the provider the
//!   rest already uses. An X25519 key costs microseconds to make where an
//!   RSA-2048 one costs 50-130 ms, which is what a cold client pays.
//!
//! RSA keys are generated and parsed with `rsa` 0.10 (which reads both
//! PKCS#1 and PKCS#8 PEM), then handed to AWS-LC as PKCS#8 DER and held only
//! there; the OAEP operations run in AWS-LC (`aws-lc-rs`, the library rustls uses by default):
//! its constant-time, assembly-optimised RSA-2048 decryption takes about
//! 0.46 ms here against 3.5 ms for `rsa`'s, and the private-key operation is
//! the largest cost of every request (see docs/performance.md). It also keeps
//! the one operation an attacker can try to time out of the crate named by
//! RUSTSEC-2023-0071.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
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
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum CryptoError {
    #[error("the operating system random number generator failed")]
    Random,
    #[error("RSA-OAEP encryption failed (is the public key at least 2048 bits?)")]
    Wrap,
    #[error("RSA-OAEP decryption failed")]
    Unwrap,
    #[error("not an acceptable RSA public key (SPKI DER, 2048 to 8192 bits)")]
    PublicKey,
    #[error("the RSA private key could not be loaded for decryption")]
    PrivateKey,
    #[error("AEAD encryption failed")]
    Seal,
    #[error("AEAD authentication failed")]
    Open,
    #[error("HPKE sealing to the reply key failed (is it a valid X25519 public key?)")]
    HpkeSeal,
    #[error("HPKE opening failed")]
    HpkeOpen,
}

/// The HPKE suite of answers sealed to an X25519 reply key.
fn hpke_suite() -> &'static dyn rustls::crypto::hpke::Hpke {
    rustls::crypto::aws_lc_rs::hpke::DH_KEM_X25519_HKDF_SHA256_AES_256
}

/// A new X25519 key pair for HPKE: (raw public key, private key wiped on
/// drop).
pub fn hpke_generate() -> Result<(Vec<u8>, rustls::crypto::hpke::HpkePrivateKey), CryptoError> {
    let (public, private) = hpke_suite()
        .generate_key_pair()
        .map_err(|_| CryptoError::Random)?;
    Ok((public.0, private))
}

/// HPKE `SealBase(pkR, info, aad, pt)`: returns `(enc, ct)`.
pub fn hpke_seal(
    public: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let public = rustls::crypto::hpke::HpkePublicKey(public.to_vec());
    let (enc, ct) = hpke_suite()
        .seal(info, aad, plaintext, &public)
        .map_err(|_| CryptoError::HpkeSeal)?;
    Ok((enc.0, ct))
}

/// HPKE `OpenBase(enc, skR, info, aad, ct)`, the plaintext in zeroizing
/// memory.
pub fn hpke_open(
    private: &rustls::crypto::hpke::HpkePrivateKey,
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes, CryptoError> {
    let enc = rustls::crypto::hpke::EncapsulatedSecret(enc.to_vec());
    hpke_suite()
        .open(&enc, info, aad, ciphertext, private)
        .map(SecretBytes::new)
        .map_err(|_| CryptoError::HpkeOpen)
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

/// An RSA public key ready for OAEP encryption (SPKI DER parsed once).
#[derive(Clone)]
pub struct Encrypter {
    key: PublicEncryptingKey,
}

impl std::fmt::Debug for Encrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encrypter({} bits)", self.bits())
    }
}

impl Encrypter {
    /// Parses an RSA SubjectPublicKeyInfo (DER). AWS-LC refuses keys outside
    /// 2048..=8192 bits and malformed moduli or exponents.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        PublicEncryptingKey::from_der(der)
            .map(|key| Self { key })
            .map_err(|_| CryptoError::PublicKey)
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.key_size_bits()
    }
}

/// An RSA private key ready for OAEP decryption, held once, by AWS-LC (which
/// wipes it when freed). The OAEP view and the encodable key share one
/// reference-counted `EVP_PKEY`; there is no second copy in another library.
pub struct Decrypter {
    key: PrivateDecryptingKey,
    oaep: OaepPrivateDecryptingKey,
}

impl std::fmt::Debug for Decrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decrypter(<redacted>)")
    }
}

impl Clone for Decrypter {
    /// Another handle on the same key (a reference count, not a copy).
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            oaep: OaepPrivateDecryptingKey::new(self.key.clone())
                .expect("a key that made an OAEP key makes another"),
        }
    }
}

impl Decrypter {
    /// Loads a PKCS#8 `PrivateKeyInfo` (DER).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = PrivateDecryptingKey::from_pkcs8(der).map_err(|_| CryptoError::PrivateKey)?;
        let oaep =
            OaepPrivateDecryptingKey::new(key.clone()).map_err(|_| CryptoError::PrivateKey)?;
        Ok(Self { key, oaep })
    }

    /// The key as PKCS#8 DER, in memory that is wiped when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let der: Pkcs8V1Der<'static> = self.key.as_der().map_err(|_| CryptoError::PrivateKey)?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The public half as SPKI DER.
    pub fn public_spki_der(&self) -> Result<Vec<u8>, CryptoError> {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        let der: PublicKeyX509Der<'static> = self
            .key
            .public_key()
            .as_der()
            .map_err(|_| CryptoError::PublicKey)?;
        Ok(der.as_ref().to_vec())
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.key_size_bits()
    }

    /// An RSA-PSS-SHA256 signature of `message` with this key (salt as long
    /// as the hash). The server signs what `GET /v1/key` announces once, at
    /// start, so a request for it costs no private-key operation.
    pub fn sign_pss_sha256(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let der = self.to_pkcs8_der()?;
        let pair =
            aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).map_err(|_| CryptoError::PrivateKey)?;
        let mut signature = vec![0u8; pair.public_modulus_len()];
        pair.sign(
            &aws_lc_rs::signature::RSA_PSS_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            message,
            &mut signature,
        )
        .map_err(|_| CryptoError::Seal)?;
        Ok(signature)
    }
}

/// Whether `signature` is an RSA-PSS-SHA256 signature of `message` by the
/// RSA key whose SubjectPublicKeyInfo DER is `spki_der`.
pub fn verify_pss_sha256(spki_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
    UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, spki_der)
        .verify(message, signature)
        .is_ok()
}

/// Encrypts `key` to `public` with RSA-OAEP-SHA256 under `label`.
pub fn wrap_key(public: &Encrypter, label: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
    oaep_encrypt(public, label, key)
}

/// Decrypts an AEAD key wrapped by [`wrap_key`]. Fails unless the plaintext is
/// exactly [`AEAD_KEY_LEN`] bytes.
pub fn unwrap_key(
    private: &Decrypter,
    label: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; AEAD_KEY_LEN]>, CryptoError> {
    let plain = oaep_decrypt(private, label, wrapped)?;
    if plain.len() != AEAD_KEY_LEN {
        return Err(CryptoError::Unwrap);
    }
    let mut key = Zeroizing::new([0u8; AEAD_KEY_LEN]);
    key.copy_from_slice(&plain);
    Ok(key)
}

/// Most plaintext bytes one RSA-OAEP-SHA256 block to `public` can carry
/// (`k - 66`: 190 for 2048 bits).
pub fn oaep_max_plaintext(public: &Encrypter) -> usize {
    (public.key.key_size_bits() / 8).saturating_sub(2 * 32 + 2)
}

/// One RSA-OAEP-SHA256 block: the primitive under [`wrap_key`], used whole
/// by protocol v1, which encrypts names and values directly.
pub fn oaep_encrypt(
    public: &Encrypter,
    label: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let oaep = OaepPublicEncryptingKey::new(public.key.clone()).map_err(|_| CryptoError::Wrap)?;
    let mut out = vec![0u8; oaep.ciphertext_size()];
    let len = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, Some(label))
        .map_err(|_| CryptoError::Wrap)?
        .len();
    out.truncate(len);
    Ok(out)
}

/// Decrypts one RSA-OAEP-SHA256 block in AWS-LC (constant-time, blinded)
/// into zeroizing memory. A ciphertext of the wrong length is refused before
/// the private key is used.
pub fn oaep_decrypt(
    private: &Decrypter,
    label: &[u8],
    ciphertext: &[u8],
) -> Result<SecretBytes, CryptoError> {
    if ciphertext.len() != private.oaep.key_size_bytes() {
        return Err(CryptoError::Unwrap);
    }
    let mut plain = SecretBytes::new(vec![0u8; private.oaep.min_output_size()]);
    let len = private
        .oaep
        .decrypt(
            &OAEP_SHA256_MGF1SHA256,
            ciphertext,
            plain.as_mut_slice(),
            Some(label),
        )
        .map_err(|_| CryptoError::Unwrap)?
        .len();
    plain.truncate(len);
    Ok(plain)
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
