//! Whether the bytes of a v1 body received so far can still be the start
//! of the original's JSON, checked as they arrive, so that a body that
//! cannot be one is refused at its first wrong byte rather than after up
//! to 1 MiB has been read and held.
//!
//! The original client sends one flat object of five fields (see
//! docs/protocol.md, "Protocol v1"): four strings of base64 or PEM and an
//! integer timestamp, all ASCII. So: optional whitespace, `{`, then keys
//! (up to [`MAX_KEY`] bytes) each with a string value (up to
//! [`MAX_STRING`] bytes: the longest, a PEM public key of an 8192-bit RSA
//! key, is under 2 KiB) or an integer, and nothing after the `}` but
//! whitespace. Anything else (another JSON type, nesting, a non-ASCII
//! byte, an overlong field) cannot be the original's JSON. The full parse
//! (serde) still decides once the whole body is in; this only refuses
//! early, and never refuses what serde would accept from an original
//! client.

/// Longest key of the original's JSON we accept (its longest is 13).
pub(super) const MAX_KEY: usize = 32;
/// Longest string value, in bytes as sent (escapes included).
pub(super) const MAX_STRING: usize = 8 * 1024;
/// Longest integer (an i64 with its sign is 20 characters).
const MAX_NUMBER: usize = 20;
/// Most whitespace in a row: compact or indented JSON needs little.
const MAX_SPACE: usize = 1024;

/// Where in the object the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the `{`.
    Start,
    /// After `{` or `,`: a key's `"` (or `}` right after `{`).
    KeyOrEnd { first: bool },
    /// Inside a key.
    Key { len: usize, escaped: bool },
    /// After a key: the `:`.
    Colon,
    /// After `:`: a string or an integer.
    Value,
    /// Inside a string value.
    Text { len: usize, escaped: bool },
    /// Inside an integer.
    Number { len: usize },
    /// After a value: `,` or `}`.
    Next,
    /// After the closing `}`: whitespace only.
    End,
}

/// The checker: feed it the body's bytes in order.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    at: At,
    space: usize,
}

/// The body cannot be the original's JSON; the reason names no content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the original locket's JSON: {0} (byte {1})")]
pub(super) struct NotV1(&'static str, usize);

impl Default for Shape {
    fn default() -> Self {
        Self {
            at: At::Start,
            space: 0,
        }
    }
}

impl Shape {
    /// Checks `bytes`, which follow `offset` bytes already fed.
    pub(super) fn feed(&mut self, bytes: &[u8], offset: usize) -> Result<(), NotV1> {
        for (i, &b) in bytes.iter().enumerate() {
            self.step(b).map_err(|why| NotV1(why, offset + i))?;
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        let space = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let in_string = matches!(self.at, At::Key { .. } | At::Text { .. });
        if space && !in_string {
            if let At::Number { .. } = self.at {
                self.at = At::Next;
            }
            self.space += 1;
            return if self.space > MAX_SPACE {
                Err("too much whitespace")
            } else {
                Ok(())
            };
        }
        self.space = 0;
        if !(0x20..0x7f).contains(&b) {
            return Err("a byte outside printable ASCII");
        }
        self.at = match (self.at, b) {
            (At::Start, b'{') => At::KeyOrEnd { first: true },
            (At::Start, _) => return Err("it does not start with an object"),
            (At::KeyOrEnd { .. }, b'"') => At::Key {
                len: 0,
                escaped: false,
            },
            (At::KeyOrEnd { first: true }, b'}') => At::End,
            (At::KeyOrEnd { .. }, _) => return Err("a key was expected"),
            (At::Key { escaped: false, .. }, b'"') => At::Colon,
            (At::Key { len, escaped }, c) => {
                if len >= MAX_KEY {
                    return Err("a key too long for the original's fields");
                }
                match (escaped, c) {
                    (false, b'\\') => At::Key {
                        len: len + 1,
                        escaped: true,
                    },
                    _ => At::Key {
                        len: len + 1,
                        escaped: false,
                    },
                }
            }
            (At::Colon, b':') => At::Value,
            (At::Colon, _) => return Err("a colon was expected"),
            (At::Value, b'"') => At::Text {
                len: 0,
                escaped: false,
            },
            (At::Value, b'-' | b'0'..=b'9') => At::Number { len: 1 },
            (At::Value, _) => return Err("a value that is neither a string nor an integer"),
            (At::Text { escaped: false, .. }, b'"') => At::Next,
            (At::Text { len, escaped }, c) => {
                if len >= MAX_STRING {
                    return Err("a string longer than any of the original's fields");
                }
                match (escaped, c) {
                    (false, b'\\') => At::Text {
                        len: len + 1,
                        escaped: true,
                    },
                    (true, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u') => {
                        At::Text {
                            len: len + 1,
                            escaped: false,
                        }
                    }
                    (true, _) => return Err("an invalid escape"),
                    (false, _) => At::Text {
                        len: len + 1,
                        escaped: false,
                    },
                }
            }
            (At::Number { len }, b'0'..=b'9') if len < MAX_NUMBER => At::Number { len: len + 1 },
            (At::Number { .. }, b'0'..=b'9') => return Err("an integer too long for a timestamp"),
            (At::Number { .. } | At::Next, b',') => At::KeyOrEnd { first: false },
            (At::Number { .. } | At::Next, b'}') => At::End,
            (At::Number { .. }, _) => return Err("not an integer"),
            (At::Next, _) => return Err("a comma or the end of the object was expected"),
            (At::End, _) => return Err("bytes after the object"),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8]) -> Result<(), NotV1> {
        Shape::default().feed(body, 0)
    }

    /// What the original client sends (Go's encoding/json: compact, PEM
    /// newlines escaped) passes, byte by byte as in one piece.
    #[test]
    fn the_originals_json_passes_in_any_split() {
        let body = br#"{"payload":"AbC+/==","signature":"c2ln","client_pubkey":"-----BEGIN ED25519 PUBLIC KEY-----\nAAAA\n-----END ED25519 PUBLIC KEY-----\n","timestamp":1767225600,"nonce":"bm9uY2U="}"#;
        check(body).unwrap();
        for split in 0..body.len() {
            let mut shape = Shape::default();
            shape.feed(&body[..split], 0).unwrap();
            shape.feed(&body[split..], split).unwrap();
        }
        check(b" {\n  \"timestamp\": -5 ,\n  \"nonce\": \"\\u002b\"\n}\n").unwrap();
    }

    #[test]
    fn the_first_wrong_byte_is_refused() {
        for (body, at) in [
            (&b"garbage"[..], 0),
            (b"{\"a\":[", 5),
            (b"{\"a\":{", 5),
            (b"{\"a\":true", 5),
            (b"{\"a\":1.5", 6),
            (b"{\"a\":\"\xff", 6),
            (b"{\"a\":\"x\"}x", 9),
            (b"{\"a\" 1", 5),
            (b"{\"a\":\"\\x", 7),
        ] {
            assert_eq!(
                check(body).unwrap_err().1,
                at,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn overlong_fields_and_whitespace_are_refused_at_their_limit() {
        let mut long = b"{\"payload\":\"".to_vec();
        let start = long.len();
        long.extend(std::iter::repeat_n(b'A', MAX_STRING + 10));
        assert_eq!(check(&long).unwrap_err().1, start + MAX_STRING);
        let spaces = vec![b' '; MAX_SPACE + 1];
        assert_eq!(check(&spaces).unwrap_err().1, MAX_SPACE);
        let key = format!("{{\"{}\"", "k".repeat(MAX_KEY + 1));
        assert!(check(key.as_bytes()).is_err());
        // Exactly at the limits: accepted.
        let at = format!(
            "{{\"{}\":\"{}\"}}",
            "k".repeat(MAX_KEY),
            "v".repeat(MAX_STRING)
        );
        check(at.as_bytes()).unwrap();
    }
}
