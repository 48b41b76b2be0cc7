//! Key material: the server's RSA key, the client's ed25519 signing key, the
//! client's in-memory reply key, and the text forms they travel in.
//!
//! * Server key: RSA (3072 bits by default, never below 2048) in a PKCS#8 PEM
//!   file created with mode 0600 on first start, so that it survives restarts
//!   and clients can pin its fingerprint.
//! * Client signing key: ed25519, PKCS#8 PEM file (mode 0600). Its public half
//!   is written as one line, `ed25519:<base64 of the 32-byte key>`, the form
//!   the registry's `keys = [...]` takes.
//! * Reply key: RSA-2048 generated in memory once per client process and
//!   never written anywhere: a later theft of the server key, or of the
//!   client's signing key, does not reveal past answers.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};

use crate::crypto;
use crate::fsutil;

/// The smallest RSA modulus locket accepts anywhere, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus locket accepts (bounds the cost of a request).
pub const MAX_RSA_BITS: usize = 8192;
/// The default size of the server key, in bits.
pub const DEFAULT_SERVER_KEY_BITS: usize = 3072;
/// The size of the ephemeral reply key, in bits.
pub const REPLY_KEY_BITS: usize = 2048;
/// The prefix of the one-line public signing key form.
pub const ED25519_PREFIX: &str = "ed25519:";

/// Problems with key files or key text. Each message names the file or form
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot create key file {path}: {source} (check that its folder exists and is writable)"
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} already exists; remove it first or choose another --out")]
    Exists { path: PathBuf },
    #[error("key file {path} has mode {mode:03o}, readable by others; run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} does not hold a {expected} PEM key: {detail}")]
    Parse {
        path: PathBuf,
        expected: &'static str,
        detail: String,
    },
    #[error("RSA key has {bits} bits; locket accepts {MIN_RSA_BITS} to {MAX_RSA_BITS}")]
    RsaSize { bits: usize },
    #[error("key generation failed: {0}")]
    Generate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Key text (PEM or DER) that is not a usable key. The detail names the
    /// encoding problem and never quotes key material.
    #[error("{0}")]
    Encoding(String),
    #[error(
        "invalid ed25519 public key {shown:?}: {detail}; expected the line printed by `locket-client keygen` (ed25519:<base64>) or a PEM public key"
    )]
    PublicKey { shown: String, detail: String },
}

/// Reads the key file `path` into zeroizing memory and parses it with
/// `parse`; a parse error names the file and the kind of key expected
/// (and, like every key error, never quotes key material).
fn read_key_file<T>(
    path: &Path,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Result<T, KeyError>,
) -> Result<T, KeyError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        KeyError::Read {
            path: path.to_owned(),
            source,
        }
    })?);
    parse(&text).map_err(|e| KeyError::Parse {
        path: path.to_owned(),
        expected,
        detail: e.to_string(),
    })
}

fn check_rsa_bits(bits: usize) -> Result<(), KeyError> {
    if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::RsaSize { bits })
    }
}

/// The server's long-lived RSA key with its public forms precomputed. The
/// private key is held once, in AWS-LC ([`crypto::Decrypter`]).
pub struct ServerKey {
    decrypter: crypto::Decrypter,
    public_pem: String,
    spki_der: Vec<u8>,
    fingerprint: String,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("fingerprint", &self.fingerprint)
            .field("private", &crate::secret::REDACTED)
            .finish()
    }
}

/// Hands an `rsa` key (just generated or parsed) to AWS-LC through PKCS#8
/// DER that is wiped afterwards; the `rsa` key wipes itself when dropped.
fn into_decrypter(private: PrivateKey) -> Result<crypto::Decrypter, KeyError> {
    use rsa::pkcs8::EncodePrivateKey as _;
    check_rsa_bits(private.size() * 8)?;
    let der = private
        .to_pkcs8_der()
        .map_err(|e| KeyError::Generate(e.into()))?;
    crypto::Decrypter::from_pkcs8_der(der.as_bytes()).map_err(|e| KeyError::Generate(e.into()))
}

/// Parses PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY` PEM. The error
/// never quotes key material.
fn parse_private_pem(text: &str) -> Result<crypto::Decrypter, KeyError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey as _;
    let private = if text.contains("BEGIN RSA PRIVATE KEY") {
        PrivateKey::from_pkcs1_pem(text).map_err(|e| KeyError::Encoding(e.to_string()))?
    } else {
        PrivateKey::from_pkcs8_pem(text).map_err(|e| KeyError::Encoding(e.to_string()))?
    };
    into_decrypter(private)
}

fn generate_rsa(bits: usize) -> Result<crypto::Decrypter, KeyError> {
    check_rsa_bits(bits)?;
    let private =
        PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|e| KeyError::Generate(e.into()))?;
    into_decrypter(private)
}

impl ServerKey {
    fn from_decrypter(decrypter: crypto::Decrypter) -> Result<Self, KeyError> {
        let spki_der = decrypter
            .public_spki_der()
            .map_err(|e| KeyError::Generate(e.into()))?;
        let public_pem =
            rsa::pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &spki_der)
                .map_err(|e| KeyError::Generate(e.into()))?;
        let fingerprint = crypto::fingerprint(&spki_der);
        Ok(Self {
            decrypter,
            public_pem,
            spki_der,
            fingerprint,
        })
    }

    /// Generates a new key of `bits` bits in memory.
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        Self::from_decrypter(generate_rsa(bits)?)
    }

    /// Loads the key at `path`, or creates it (mode 0600) with `bits` bits if
    /// the file does not exist. Returns the key and whether it was created.
    /// Refuses a key file that group or others can read.
    pub fn load_or_create(path: &Path, bits: usize) -> Result<(Self, bool), KeyError> {
        match std::fs::metadata(path) {
            Ok(_) => Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(bits)?;
                let pem = key.to_pkcs8_pem()?;
                fsutil::create_private(path, pem.as_bytes(), 0o600).map_err(|source| {
                    KeyError::Create {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                Ok((key, true))
            }
            Err(source) => Err(KeyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// [`ServerKey::load_or_create`], logging a created key's fingerprint
    /// (`what` names it: "server key", "next server key", "v1 compat key"),
    /// so that an operator sees the fingerprint to pin on the first start.
    pub fn load_or_create_logged(path: &Path, bits: usize, what: &str) -> Result<Self, KeyError> {
        let (key, created) = Self::load_or_create(path, bits)?;
        if created {
            tracing::info!(path = %path.display(), bits = key.bits(), fingerprint = key.fingerprint(), "created a new {what}");
        }
        Ok(key)
    }

    /// Loads an existing key file (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        if let Some(mode) = fsutil::loose_permissions(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })? {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        read_key_file(path, "RSA private", Self::from_pem)
    }

    /// Parses the text of a key file (PKCS#8 or PKCS#1 PEM) and checks the
    /// key's size. The error never quotes key material.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        Self::from_decrypter(parse_private_pem(text)?)
    }

    /// Writes the private key to a new file with mode 0600 (PKCS#8 PEM).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self.to_pkcs8_pem()?;
        fsutil::create_private(path, pem.as_bytes(), 0o600).map_err(|source| KeyError::Create {
            path: path.to_owned(),
            source,
        })
    }

    /// The private key as PKCS#8 PEM, in memory wiped when dropped (the key
    /// file's form).
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        let der = self
            .decrypter
            .to_pkcs8_der()
            .map_err(|e| KeyError::Generate(e.into()))?;
        rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| KeyError::Generate(e.into()))
    }

    /// The key in AWS-LC, for unwrapping request keys.
    pub fn decrypter(&self) -> &crypto::Decrypter {
        &self.decrypter
    }
    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
    /// The public key as SPKI DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
    /// `sha256:<hex>` of the SPKI DER.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.decrypter.bits()
    }
}

/// A server public key as a client sees it.
#[derive(Clone, Debug)]
pub struct ServerPublicKey {
    /// The RSA key requests are encrypted to.
    pub key: crypto::Encrypter,
    /// `sha256:<hex>` of its SPKI DER: what clients pin.
    pub fingerprint: String,
    /// The SubjectPublicKeyInfo DER (what signatures are checked with).
    pub spki_der: Vec<u8>,
}

impl ServerPublicKey {
    /// Parses an SPKI PEM public key, computing its fingerprint from the DER
    /// itself (never trusting a fingerprint sent beside it).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let key = PublicKey::from_public_key_pem(pem)
            .map_err(|e| KeyError::Encoding(format!("not an RSA SPKI PEM public key: {e}")))?;
        check_rsa_bits(key.size() * 8)?;
        let der = key
            .to_public_key_der()
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        Ok(Self {
            fingerprint: crypto::fingerprint(der.as_bytes()),
            key: crypto::Encrypter::from_spki_der(der.as_bytes())
                .map_err(|e| KeyError::Encoding(e.to_string()))?,
            spki_der: der.as_bytes().to_vec(),
        })
    }
}

/// The SPKI DER of an X25519 public key (RFC 8410) before its 32 bytes:
/// SEQUENCE { SEQUENCE { OID 1.3.101.110 }, BIT STRING { 0 unused bits } }.
pub const X25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00,
];

/// A reply key as the server receives it: what the answer is sealed to.
#[derive(Clone, Debug)]
pub enum ReplyPublicKey {
    /// RSA-OAEP wraps the answer's AES key (2048 to 8192 bits).
    Rsa(crypto::Encrypter),
    /// HPKE seals the answer to this X25519 key.
    X25519([u8; 32]),
}

/// Parses a reply key sent by a client (SPKI DER): X25519, or RSA of 2048
/// to 8192 bits.
pub fn parse_reply_key(der: &[u8]) -> Result<ReplyPublicKey, KeyError> {
    if let Some(raw) = der.strip_prefix(&X25519_SPKI_PREFIX) {
        return raw.try_into().map(ReplyPublicKey::X25519).map_err(|_| {
            KeyError::Encoding("an X25519 reply key must hold exactly 32 bytes".into())
        });
    }
    let key = crypto::Encrypter::from_spki_der(der).map_err(|e| {
        KeyError::Encoding(format!("reply key is neither X25519 nor RSA SPKI DER: {e}"))
    })?;
    check_rsa_bits(key.bits())?;
    Ok(ReplyPublicKey::Rsa(key))
}

/// The client's ephemeral key for answers; lives only in memory. RSA (held
/// once, by AWS-LC) for servers that predate X25519 reply keys, else
/// X25519, fresh for each request. A clone is another handle on the same
/// key (tests and benchmarks reuse an RSA one instead of paying for its
/// generation each time).
#[derive(Clone)]
pub struct ReplyKey {
    private: ReplyPrivateKey,
    spki_der: Vec<u8>,
}

/// The private half of a [`ReplyKey`].
#[derive(Clone)]
pub enum ReplyPrivateKey {
    /// An RSA reply key (servers before X25519 reply keys).
    Rsa(crypto::Decrypter),
    /// Wiped when the last handle goes.
    X25519(std::sync::Arc<rustls::crypto::hpke::HpkePrivateKey>),
}

impl fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyKey(<redacted>)")
    }
}

impl ReplyKey {
    /// Generates a new RSA reply key ([`REPLY_KEY_BITS`] bits): 50-130 ms
    /// of prime search.
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_decrypter(generate_rsa(REPLY_KEY_BITS)?)
    }

    /// Generates a new X25519 reply key: microseconds.
    pub fn generate_x25519() -> Result<Self, KeyError> {
        let (public, private) =
            crypto::hpke_generate().map_err(|e| KeyError::Generate(e.into()))?;
        let mut spki_der = X25519_SPKI_PREFIX.to_vec();
        spki_der.extend_from_slice(&public);
        Ok(Self {
            private: ReplyPrivateKey::X25519(std::sync::Arc::new(private)),
            spki_der,
        })
    }

    /// Uses a raw X25519 private key as a reply key: for published test
    /// vectors, which must be reproducible.
    pub fn from_x25519_private(private: &[u8; 32]) -> Result<Self, KeyError> {
        let invalid = || KeyError::Encoding("not an X25519 private key".into());
        let public = aws_lc_rs::agreement::PrivateKey::from_private_key(
            &aws_lc_rs::agreement::X25519,
            private,
        )
        .map_err(|_| invalid())?
        .compute_public_key()
        .map_err(|_| invalid())?;
        let mut spki_der = X25519_SPKI_PREFIX.to_vec();
        spki_der.extend_from_slice(public.as_ref());
        Ok(Self {
            private: ReplyPrivateKey::X25519(std::sync::Arc::new(private.to_vec().into())),
            spki_der,
        })
    }

    /// Uses the private key in `text` (PKCS#8 or PKCS#1 PEM) as a reply key:
    /// for published test vectors, which must be reproducible.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        Self::from_decrypter(parse_private_pem(text)?)
    }

    fn from_decrypter(decrypter: crypto::Decrypter) -> Result<Self, KeyError> {
        let spki_der = decrypter
            .public_spki_der()
            .map_err(|e| KeyError::Generate(e.into()))?;
        Ok(Self {
            private: ReplyPrivateKey::Rsa(decrypter),
            spki_der,
        })
    }

    /// The private half, to open answers with.
    pub fn private(&self) -> &ReplyPrivateKey {
        &self.private
    }
    /// The public half as SPKI DER (sent in every request).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// The client's ed25519 signing key.
pub struct ClientKey {
    signing: SigningKey,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("public", &self.public_line())
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let seed = zeroize::Zeroizing::new(
            crypto::random_bytes::<32>().map_err(|e| KeyError::Generate(e.into()))?,
        );
        Ok(Self::from_seed(&seed))
    }

    /// A key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// Writes the key to a new file with mode 0600 (PKCS#8 PEM).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.into()))?;
        fsutil::create_private(path, pem.as_bytes(), 0o600).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                KeyError::Create {
                    path: path.to_owned(),
                    source,
                }
            }
        })
    }

    /// Reads a key file: PKCS#8 PEM (`PRIVATE KEY`), or the original locket's
    /// `ED25519 PRIVATE KEY` PEM holding the raw 32-byte seed. Returns the
    /// file's mode too when group or others may access it, so the caller can
    /// warn (a client key checked out of git, like the demo key, is 0644).
    pub fn load(path: &Path) -> Result<(Self, Option<u32>), KeyError> {
        let loose = fsutil::loose_permissions(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok((Self::read(path)?, loose))
    }

    fn read(path: &Path) -> Result<Self, KeyError> {
        read_key_file(path, "ed25519 private", Self::from_pem)
    }

    /// Parses the text of a key file (see [`ClientKey::load`]). The error
    /// describes the encoding problem and never quotes key material.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        if let Some(body) = pem_body(text, "ED25519 PRIVATE KEY") {
            // base64's errors can quote a symbol of the key: say only what is wrong.
            let seed = zeroize::Zeroizing::new(
                B64.decode(body)
                    .map_err(|_| KeyError::Encoding("the key's base64 body is invalid".into()))?,
            );
            let seed: &[u8; 32] = seed
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::Encoding("seed is not 32 bytes".into()))?;
            return Ok(Self::from_seed(seed));
        }
        SigningKey::from_pkcs8_pem(text)
            .map(|signing| Self { signing })
            .map_err(|e| KeyError::Encoding(e.to_string()))
    }

    /// The public key as the one-line registry form, `ed25519:<base64>`.
    pub fn public_line(&self) -> String {
        public_line(&self.signing.verifying_key())
    }

    /// The public half, as the server's registry holds it.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs `message` (the canonical request bytes).
    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        use ed25519_dalek::Signer;
        self.signing.sign(message)
    }
}

/// Formats a public signing key as `ed25519:<base64>`.
pub fn public_line(key: &VerifyingKey) -> String {
    format!("{ED25519_PREFIX}{}", B64.encode(key.as_bytes()))
}

/// Extracts the base64 body of a PEM block with the given label.
fn pem_body(text: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    Some(text[start..stop].split_whitespace().collect())
}

/// Parses a registry public key: `ed25519:<base64>`, an SPKI PEM
/// (`PUBLIC KEY`), or the original's `ED25519 PUBLIC KEY` PEM with the raw
/// 32 bytes. Rejects weak (small-order) keys, which would let one signature
/// verify for many messages.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    let shown: String = text.chars().take(60).collect();
    let err = |detail: &str| KeyError::PublicKey {
        shown: shown.clone(),
        detail: detail.to_owned(),
    };
    let key = if let Some(b64) = text.strip_prefix(ED25519_PREFIX) {
        raw_public_key(
            &B64.decode(b64.trim())
                .map_err(|_| err("not valid base64"))?,
        )
        .ok_or_else(|| err("not a valid 32-byte ed25519 point"))?
    } else if let Some(body) = pem_body(text, "ED25519 PUBLIC KEY") {
        raw_public_key(
            &B64.decode(body)
                .map_err(|_| err("PEM body is not valid base64"))?,
        )
        .ok_or_else(|| err("not a valid 32-byte ed25519 point"))?
    } else if text.contains("-----BEGIN PUBLIC KEY-----") {
        VerifyingKey::from_public_key_pem(text).map_err(|_| err("not an ed25519 SPKI PEM"))?
    } else {
        return Err(err("unknown format"));
    };
    if key.is_weak() {
        return Err(err("weak (small-order) key"));
    }
    Ok(key)
}

fn raw_public_key(bytes: &[u8]) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(bytes.try_into().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_line_round_trips_and_weak_keys_are_refused() {
        let key = ClientKey::from_seed(&[7u8; 32]);
        let line = key.public_line();
        assert!(line.starts_with(ED25519_PREFIX));
        assert_eq!(parse_public_key(&line).unwrap(), key.verifying_key());
        // The identity point is small-order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = format!("{ED25519_PREFIX}{}", B64.encode(identity));
        let e = parse_public_key(&weak).unwrap_err().to_string();
        assert!(e.contains("weak"), "{e}");
        assert!(parse_public_key("ed25519:!!!").is_err());
        assert!(parse_public_key("ssh-ed25519 AAAA").is_err());
    }

    #[test]
    fn original_pem_form_is_accepted() {
        let key = ClientKey::from_seed(&[9u8; 32]);
        let pem = format!(
            "-----BEGIN ED25519 PUBLIC KEY-----\n{}\n-----END ED25519 PUBLIC KEY-----\n",
            B64.encode(key.verifying_key().as_bytes())
        );
        assert_eq!(parse_public_key(&pem).unwrap(), key.verifying_key());
    }
}
