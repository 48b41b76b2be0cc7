//! Protocol v2: wire types, the canonical bytes that get signed, and sealing
//! and opening of requests and answers.
//!
//! This file is the one place to check against `docs/protocol.md`. Nothing
//! here does I/O; the server and client call these functions.
//!
//! Request:  client --POST /v1/secrets--> server
//!   body_plain = encode_request_body(names, reply_key_spki_der)
//!   k          = fresh 256-bit key
//!   wrapped    = RSA-OAEP-SHA256(server_key, k, label = REQUEST_KEY_LABEL)
//!   ciphertext = AES-256-GCM(k, nonce = 0^96, aad = request_aad(header), body_plain)
//!   signature  = ed25519(client_key, signed_bytes(header, wrapped, ciphertext))
//!
//! Answer:   server --200/404--> client
//!   k'         = fresh 256-bit key
//!   wrapped    = RSA-OAEP-SHA256(reply_key, k', label = RESPONSE_KEY_LABEL)
//!   ciphertext = AES-256-GCM(k', nonce = 0^96, aad = response_aad(header), answer_plain)

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError};
use crate::keys::{
    ClientKey, ReplyKey, ReplyPrivateKey, ReplyPublicKey, ServerKey, ServerPublicKey,
};
use crate::secret::{SecretBytes, SecretValue};
use crate::secret_set::SecretSet;

/// The protocol version carried in every message and bound into every MAC.
pub const VERSION: u8 = 2;
/// The version of a request bound to one server process (its `instance`,
/// from `GET /v1/key`): the header's version byte and the JSON `version`.
/// The encrypted body and the answer stay [`VERSION`].
pub const BOUND_VERSION: u8 = 3;
/// Length of a server instance id in bytes.
pub const INSTANCE_LEN: usize = 16;
/// OAEP label for the key that encrypts a request.
pub const REQUEST_KEY_LABEL: &[u8] = b"locket/v2 request key";
/// OAEP label for the key that encrypts an answer.
pub const RESPONSE_KEY_LABEL: &[u8] = b"locket/v2 response key";
/// Domain separator at the start of the signed bytes.
pub const SIGNATURE_CONTEXT: &[u8] = b"locket/v2 request signature\0";
/// Domain separator at the start of the request AEAD associated data.
pub const REQUEST_AAD_CONTEXT: &[u8] = b"locket/v2 request body\0";
/// Domain separator at the start of the answer AEAD associated data.
pub const RESPONSE_AAD_CONTEXT: &[u8] = b"locket/v2 response body\0";
/// Length of the request nonce in bytes.
pub const NONCE_LEN: usize = 16;
/// Longest client name accepted.
pub const MAX_CLIENT_NAME_LEN: usize = 64;
/// Longest secret name accepted.
pub const MAX_SECRET_NAME_LEN: usize = 256;
/// Most names one request may ask for.
pub const MAX_NAMES_PER_REQUEST: usize = 10_000;

/// The key path: `GET /v1/key`.
pub const KEY_PATH: &str = "/v1/key";
/// The secrets path: `POST /v1/secrets`.
pub const SECRETS_PATH: &str = "/v1/secrets";

/// Why a message was refused. The messages are for logs and the client's
/// own diagnostics; the server never sends the detail of an authentication
/// failure to the caller.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum ProtocolError {
    #[error("malformed message: {0}")]
    Malformed(Shape),
    #[error("malformed message: {what} is not the expected JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported protocol version {0} (this build speaks version {VERSION})")]
    Version(u8),
    #[error("the wrapped key could not be decrypted with this key")]
    Unwrap,
    #[error("the ciphertext failed authentication (tampered, or not meant for this request)")]
    Open,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// What is wrong with the shape of a message: a fixed reason each, so a
/// caller (a test, the server's 400, a fuzz target) matches on it rather
/// than on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum Shape {
    #[error("field `{0}` is not standard base64")]
    Base64(&'static str),
    #[error("field `{field}` must be {len} bytes")]
    Length { field: &'static str, len: usize },
    #[error("field `instance` needs version {BOUND_VERSION}")]
    InstanceNeedsBoundVersion,
    #[error("version {BOUND_VERSION} needs field `instance`")]
    BoundVersionNeedsInstance,
    #[error("field `client` must be 1-64 characters of A-Za-z0-9._-")]
    ClientName,
    #[error("field `server_fingerprint` must be sha256:<64 hex digits>")]
    Fingerprint,
    #[error("field `wrapped_key` must be one RSA block of 2048 to 8192 bits")]
    WrappedKeySize,
    #[error("field `ciphertext` is shorter than its tag")]
    ShortCiphertext,
    #[error("encrypted body is truncated")]
    Truncated,
    #[error("a secret name is not UTF-8")]
    NameNotUtf8,
    #[error("a secret name is empty, too long or has control characters")]
    BadName,
    #[error("encrypted body count exceeds its length")]
    CountTooLarge,
    #[error("trailing bytes after encrypted body")]
    TrailingBytes,
    #[error("more than {MAX_NAMES_PER_REQUEST} names in one request")]
    TooManyNames,
    #[error("a secret value is not UTF-8")]
    ValueNotUtf8,
}

fn malformed(shape: Shape) -> ProtocolError {
    ProtocolError::Malformed(shape)
}

/// The JSON body of `POST /v1/secrets`. Binary fields are standard base64
/// with padding.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct WireRequest {
    pub version: u8,
    /// The client's registered name.
    pub client: String,
    /// The fingerprint of the key the request is encrypted to.
    pub server_fingerprint: String,
    /// Seconds since the Unix epoch, checked against the clock-skew window.
    pub timestamp: i64,
    pub nonce: String,
    /// The server process the request is for (version 3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub wrapped_key: String,
    pub ciphertext: String,
    pub signature: String,
}

/// The JSON body of a sealed answer (status 200 or 404).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct WireAnswer {
    pub version: u8,
    pub wrapped_key: String,
    pub ciphertext: String,
}

/// The JSON body of every unsealed error answer (400, 403, 413, ...).
#[derive(Debug, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub struct WireError {
    pub error: String,
    pub message: String,
}

/// The JSON body of `GET /v1/key`.
#[derive(Debug, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "its fields are the wire or settings keys, documented with their format (docs/protocol.md, the README)"
)]
pub struct WireKey {
    pub version: u8,
    /// `RSA-OAEP-SHA256`.
    pub algorithm: String,
    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key: String,
    /// `sha256:` + lowercase hex of the SPKI DER.
    pub fingerprint: String,
    /// This server process's instance id, base64 of 16 random bytes drawn
    /// at start. A client that sees it binds its requests to it (version
    /// 3), so no other process (a restart, a second server sharing the
    /// key) answers them. Absent from servers before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The reply keys this server seals answers to: [`REPLY_KEY_RSA`]
    /// always (servers before the field take only RSA), and
    /// [`REPLY_KEY_X25519`]. A client picks X25519 when it is listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_keys: Vec<String>,
    /// The next server key during a rotation: a client whose pins hold it
    /// but not the current key encrypts to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<WireNextKey>,
    /// RSA-PSS-SHA256 by this key over [`key_response_signed_bytes`], base64:
    /// a client takes `instance` and `reply_keys` only from a response its
    /// pinned key signed, so nobody in between can strip them (a downgrade
    /// to unbound requests with RSA reply keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What `GET /v1/key`'s signatures cover: the response's announcements,
/// each length-prefixed, after a domain label.
pub fn key_response_signed_bytes(
    fingerprint: &str,
    instance: Option<&str>,
    reply_keys: &[String],
    next_fingerprint: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let lp = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    lp(&mut out, b"locket key response v1");
    lp(&mut out, fingerprint.as_bytes());
    lp(&mut out, instance.unwrap_or("").as_bytes());
    lp(&mut out, reply_keys.join(",").as_bytes());
    lp(&mut out, next_fingerprint.unwrap_or("").as_bytes());
    out
}

/// `GET /v1/key`'s `next`: the key a rotation will promote.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireNextKey {
    /// SPKI PEM.
    pub public_key: String,
    /// RSA-PSS-SHA256 by the next key over the same bytes as the current
    /// key's signature, for clients that pin only the next key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// `sha256:` + lowercase hex of the SPKI DER.
    pub fingerprint: String,
}

/// `GET /v1/key`'s name for RSA reply keys (RSA-OAEP wraps the AES key).
pub const REPLY_KEY_RSA: &str = "RSA-OAEP-SHA256";
/// `GET /v1/key`'s name for X25519 reply keys: HPKE (RFC 9180) base mode,
/// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
pub const REPLY_KEY_X25519: &str = "HPKE-X25519-SHA256-AES256GCM";

/// The fields of a request that identify it; they are bound into the
/// signature and into both AEAD associated data strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The client's registered name.
    pub client: String,
    /// The fingerprint of the server key the request is encrypted to.
    pub server_fingerprint: String,
    /// Seconds since the Unix epoch, checked against the clock-skew window.
    pub timestamp: i64,
    /// Random, never accepted twice within the window.
    pub nonce: [u8; NONCE_LEN],
    /// The server instance the request is bound to: `Some` makes it a
    /// version 3 request, which only that server process answers.
    pub instance: Option<[u8; INSTANCE_LEN]>,
}

/// A decoded, not yet verified request.
#[derive(Debug, Clone)]
pub struct Request {
    /// What is signed in the clear.
    pub header: Header,
    /// The request key, RSA-OAEP-wrapped to the server key.
    pub wrapped_key: Vec<u8>,
    /// The body, AES-256-GCM under the request key.
    pub ciphertext: Vec<u8>,
    /// ed25519 over the canonical signed bytes.
    pub signature: Signature,
}

/// Appends `u32be(len) || bytes`.
fn put_lp(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Header {
    /// The version byte of this header: [`BOUND_VERSION`] when it names an
    /// instance, else [`VERSION`].
    pub fn version(&self) -> u8 {
        if self.instance.is_some() {
            BOUND_VERSION
        } else {
            VERSION
        }
    }

    fn put_common(&self, out: &mut Vec<u8>) {
        out.push(self.version());
        put_lp(out, self.client.as_bytes());
        put_lp(out, self.server_fingerprint.as_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        put_lp(out, &self.nonce);
        if let Some(instance) = &self.instance {
            put_lp(out, instance);
        }
    }

    /// Associated data of the request ciphertext.
    pub fn request_aad(&self) -> Vec<u8> {
        let mut out = REQUEST_AAD_CONTEXT.to_vec();
        self.put_common(&mut out);
        out
    }

    /// Associated data of the answer ciphertext: binds the answer to this
    /// request (its nonce) so that it cannot be replayed to another.
    pub fn response_aad(&self) -> Vec<u8> {
        let mut out = RESPONSE_AAD_CONTEXT.to_vec();
        self.put_common(&mut out);
        out
    }

    /// The exact bytes the client signs.
    pub fn signed_bytes(&self, wrapped_key: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            SIGNATURE_CONTEXT.len() + 128 + wrapped_key.len() + ciphertext.len(),
        );
        out.extend_from_slice(SIGNATURE_CONTEXT);
        self.put_common(&mut out);
        put_lp(&mut out, wrapped_key);
        put_lp(&mut out, ciphertext);
        out
    }
}

fn b64(field: &'static str, text: &str) -> Result<Vec<u8>, ProtocolError> {
    B64.decode(text)
        .map_err(|_| malformed(Shape::Base64(field)))
}

/// Decodes an instance id (`GET /v1/key`'s `instance`, a request's
/// `instance`): base64 of exactly [`INSTANCE_LEN`] bytes.
pub fn decode_instance(text: &str) -> Result<[u8; INSTANCE_LEN], ProtocolError> {
    b64("instance", text)?.try_into().map_err(|_| {
        malformed(Shape::Length {
            field: "instance",
            len: INSTANCE_LEN,
        })
    })
}

/// Encodes an instance id as `GET /v1/key` and a request carry it.
pub fn encode_instance(instance: &[u8; INSTANCE_LEN]) -> String {
    B64.encode(instance)
}

/// Checks a client name: 1 to 64 characters of `A-Za-z0-9._-`.
pub fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a secret name: 1 to 256 bytes, no control characters.
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_SECRET_NAME_LEN && !name.chars().any(char::is_control)
}

impl Request {
    /// Parses a request body without any cryptography: JSON shape, base64,
    /// field sizes. Cheap enough to run for anyone who can connect.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let wire: WireRequest =
            serde_json::from_slice(body).map_err(|source| ProtocolError::Json {
                what: "request",
                source,
            })?;
        let instance = match (wire.version, &wire.instance) {
            (VERSION, None) => None,
            (BOUND_VERSION, Some(text)) => Some(decode_instance(text)?),
            (VERSION, Some(_)) => {
                return Err(malformed(Shape::InstanceNeedsBoundVersion));
            }
            (BOUND_VERSION, None) => {
                return Err(malformed(Shape::BoundVersionNeedsInstance));
            }
            (other, _) => return Err(ProtocolError::Version(other)),
        };
        if !valid_client_name(&wire.client) {
            return Err(malformed(Shape::ClientName));
        }
        if !wire.server_fingerprint.starts_with("sha256:")
            || wire.server_fingerprint.len() != 7 + 64
        {
            return Err(malformed(Shape::Fingerprint));
        }
        let nonce: [u8; NONCE_LEN] = b64("nonce", &wire.nonce)?.try_into().map_err(|_| {
            malformed(Shape::Length {
                field: "nonce",
                len: NONCE_LEN,
            })
        })?;
        let signature =
            Signature::from_slice(&b64("signature", &wire.signature)?).map_err(|_| {
                malformed(Shape::Length {
                    field: "signature",
                    len: 64,
                })
            })?;
        let wrapped_key = b64("wrapped_key", &wire.wrapped_key)?;
        if !(256..=1024).contains(&wrapped_key.len()) {
            return Err(malformed(Shape::WrappedKeySize));
        }
        let ciphertext = b64("ciphertext", &wire.ciphertext)?;
        if ciphertext.len() < crypto::AEAD_TAG_LEN {
            return Err(malformed(Shape::ShortCiphertext));
        }
        Ok(Self {
            header: Header {
                client: wire.client,
                server_fingerprint: wire.server_fingerprint,
                timestamp: wire.timestamp,
                nonce,
                instance,
            },
            wrapped_key,
            ciphertext,
            signature,
        })
    }

    /// The JSON body to send.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireRequest {
            version: self.header.version(),
            client: self.header.client.clone(),
            server_fingerprint: self.header.server_fingerprint.clone(),
            timestamp: self.header.timestamp,
            nonce: B64.encode(self.header.nonce),
            instance: self.header.instance.as_ref().map(encode_instance),
            wrapped_key: B64.encode(&self.wrapped_key),
            ciphertext: B64.encode(&self.ciphertext),
            signature: B64.encode(self.signature.to_bytes()),
        };
        serde_json::to_vec(&wire).expect("serializing plain strings cannot fail")
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        self.header
            .signed_bytes(&self.wrapped_key, &self.ciphertext)
    }

    /// Checks the signature with `verify_strict` (rejects malleable and
    /// small-order encodings).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify_strict(&self.signed_bytes(), &self.signature)
            .is_ok()
    }

    /// Decrypts the body. This is the RSA private-key operation: call it only
    /// for a request whose client, address, clock, signature and nonce all
    /// passed.
    pub fn open(&self, server: &ServerKey) -> Result<RequestBody, ProtocolError> {
        let key = crypto::unwrap_key(server.decrypter(), REQUEST_KEY_LABEL, &self.wrapped_key)
            .map_err(|_| ProtocolError::Unwrap)?;
        let plain = crypto::open(&key, &self.header.request_aad(), &self.ciphertext)
            .map_err(|_| ProtocolError::Open)?;
        RequestBody::decode(&plain)
    }

    /// Builds, encrypts and signs a request.
    pub fn seal(
        header: Header,
        body: &RequestBody,
        server: &ServerPublicKey,
        signer: &ClientKey,
    ) -> Result<Self, ProtocolError> {
        let key = crypto::new_aead_key()?;
        let wrapped_key = crypto::wrap_key(&server.key, REQUEST_KEY_LABEL, key.as_slice())?;
        let mut ciphertext = body.encode();
        crypto::seal(&key, &header.request_aad(), &mut ciphertext)?;
        let ciphertext = std::mem::take(&mut *ciphertext);
        let signature = signer.sign(&header.signed_bytes(&wrapped_key, &ciphertext));
        Ok(Self {
            header,
            wrapped_key,
            ciphertext,
            signature,
        })
    }
}

/// A little reader for the length-prefixed encodings.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(malformed(Shape::Truncated));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn lp(&mut self) -> Result<&'a [u8], ProtocolError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn name(&mut self) -> Result<String, ProtocolError> {
        let s = std::str::from_utf8(self.lp()?).map_err(|_| malformed(Shape::NameNotUtf8))?;
        if !valid_secret_name(s) {
            return Err(malformed(Shape::BadName));
        }
        Ok(s.to_owned())
    }
    /// A count that cannot exceed what the remaining bytes could hold.
    fn count(&mut self, min_item: usize) -> Result<usize, ProtocolError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(malformed(Shape::CountTooLarge));
        }
        Ok(n)
    }
    fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(Shape::TrailingBytes))
        }
    }
}

/// What a request asks for (the plaintext inside the request ciphertext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBody {
    /// Secret names; empty means every secret this client may read.
    pub names: Vec<String>,
    /// The client's reply RSA public key, SPKI DER.
    pub reply_key: Vec<u8>,
}

impl RequestBody {
    /// `u8 version || lp(reply_key) || u32 count || lp(name)*`
    pub fn encode(&self) -> SecretBytes {
        let size = 1
            + 4
            + self.reply_key.len()
            + 4
            + self.names.iter().map(|n| 4 + n.len()).sum::<usize>();
        let mut out = SecretBytes::new(Vec::with_capacity(size + crypto::AEAD_TAG_LEN));
        out.push(VERSION);
        put_lp(&mut out, &self.reply_key);
        out.extend_from_slice(&(self.names.len() as u32).to_be_bytes());
        for name in &self.names {
            put_lp(&mut out, name.as_bytes());
        }
        out
    }

    /// Parses a decrypted request body.
    pub fn decode(plain: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader { buf: plain };
        let version = r.u8()?;
        if version != VERSION {
            return Err(ProtocolError::Version(version));
        }
        let reply_key = r.lp()?.to_vec();
        let count = r.count(4)?;
        if count > MAX_NAMES_PER_REQUEST {
            return Err(malformed(Shape::TooManyNames));
        }
        let names = (0..count)
            .map(|_| r.name())
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(Self { names, reply_key })
    }
}

/// The plaintext of an answer: values found, and names that the client may
/// read but that do not exist (status 404 when not empty).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The values, by name.
    pub secrets: SecretSet,
    /// Names the client may read that do not exist.
    pub missing: Vec<String>,
}

/// Size in bytes of an encoded answer, computed before encoding so the
/// buffer is allocated exactly once.
pub fn answer_size<'a>(
    secrets: impl Iterator<Item = (&'a str, &'a SecretValue)>,
    missing: &[String],
) -> usize {
    1 + 4
        + secrets.map(|(n, v)| 8 + n.len() + v.len()).sum::<usize>()
        + 4
        + missing.iter().map(|n| 4 + n.len()).sum::<usize>()
}

/// `u8 version || u32 count || (lp(name) lp(value))* || u32 count || lp(name)*`
pub fn encode_answer<'a>(
    secrets: &[(&'a str, &'a SecretValue)],
    missing: &[String],
) -> SecretBytes {
    let size = answer_size(secrets.iter().copied(), missing);
    let mut out = SecretBytes::new(Vec::with_capacity(size + crypto::AEAD_TAG_LEN));
    out.push(VERSION);
    out.extend_from_slice(&(secrets.len() as u32).to_be_bytes());
    for (name, value) in secrets {
        put_lp(&mut out, name.as_bytes());
        put_lp(&mut out, value.expose().as_bytes());
    }
    out.extend_from_slice(&(missing.len() as u32).to_be_bytes());
    for name in missing {
        put_lp(&mut out, name.as_bytes());
    }
    out
}

impl Answer {
    /// Parses a decrypted answer body.
    pub fn decode(plain: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader { buf: plain };
        let version = r.u8()?;
        if version != VERSION {
            return Err(ProtocolError::Version(version));
        }
        let count = r.count(8)?;
        let mut secrets = SecretSet::with_capacity(count);
        for _ in 0..count {
            let name = r.name()?;
            let value = std::str::from_utf8(r.lp()?).map_err(|_| malformed(Shape::ValueNotUtf8))?;
            secrets.push(name, SecretValue::from(value));
        }
        let count = r.count(4)?;
        let missing = (0..count)
            .map(|_| r.name())
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(Self { secrets, missing })
    }
}

/// Seals an encoded answer to the client's reply key, bound to `header`.
pub fn seal_answer(
    mut plain: SecretBytes,
    reply_key: &ReplyPublicKey,
    header: &Header,
) -> Result<WireAnswer, ProtocolError> {
    let (wrapped, ciphertext) = match reply_key {
        ReplyPublicKey::Rsa(reply_key) => {
            let key = crypto::new_aead_key()?;
            let wrapped = crypto::wrap_key(reply_key, RESPONSE_KEY_LABEL, key.as_slice())?;
            crypto::seal(&key, &header.response_aad(), &mut plain)?;
            (wrapped, std::mem::take(&mut *plain))
        }
        ReplyPublicKey::X25519(public) => crypto::hpke_seal(
            public,
            RESPONSE_KEY_LABEL,
            &header.response_aad(),
            plain.as_slice(),
        )?,
    };
    Ok(WireAnswer {
        version: VERSION,
        wrapped_key: B64.encode(wrapped),
        ciphertext: B64.encode(ciphertext),
    })
}

/// Opens an answer with the reply key, checking that it is bound to the
/// request that `header` describes.
pub fn open_answer(
    body: &[u8],
    reply: &ReplyKey,
    header: &Header,
) -> Result<Answer, ProtocolError> {
    let wire: WireAnswer = serde_json::from_slice(body).map_err(|source| ProtocolError::Json {
        what: "answer",
        source,
    })?;
    if wire.version != VERSION {
        return Err(ProtocolError::Version(wire.version));
    }
    let wrapped = b64("wrapped_key", &wire.wrapped_key)?;
    let ciphertext = b64("ciphertext", &wire.ciphertext)?;
    let plain = match reply.private() {
        ReplyPrivateKey::Rsa(decrypter) => {
            let key = crypto::unwrap_key(decrypter, RESPONSE_KEY_LABEL, &wrapped)
                .map_err(|_| ProtocolError::Unwrap)?;
            crypto::open(&key, &header.response_aad(), &ciphertext)
                .map_err(|_| ProtocolError::Open)?
        }
        ReplyPrivateKey::X25519(private) => crypto::hpke_open(
            private,
            &wrapped,
            RESPONSE_KEY_LABEL,
            &header.response_aad(),
            &ciphertext,
        )
        .map_err(|_| ProtocolError::Open)?,
    };
    Answer::decode(&plain)
}
