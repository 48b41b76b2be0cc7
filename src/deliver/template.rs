//! Templates: a config file with secrets in it, rendered beside the
//! secrets (`templates.<file>` in the NixOS module, `render --template`).
//!
//! The syntax is deliberately tiny and strict, so a reviewer can see at a
//! glance what a template does and a typo cannot render an empty password:
//!
//! - `{{ NAME }}` is the value of secret `NAME` (spaces inside the braces
//!   are optional). A name that is not among the fetched secrets is an
//!   error that names it; nothing is written.
//! - `{{ "text" }}` is `text` as it stands, the way to write a literal `{{`
//!   (`{{ "{{" }}`).
//! - `{{ NAME | FORMAT }}` is the value written for a format, so that a
//!   value cannot break out of its place (a newline adding a line to an
//!   INI file, a quote ending a JSON string): `json` and `yaml` write a
//!   double-quoted string with JSON's escapes (valid YAML too), `shell` a
//!   single-quoted POSIX word, and `ini` or `line` write the value as it
//!   is but refuse one with a control character (a newline, a carriage
//!   return, NUL), naming the secret and the line, never the value.
//!   Without a format the value is inserted as it is.
//! - Everything else is copied unchanged. An opened `{{` without its `}}`
//!   is an error naming the line.
//!
//! No expressions or loops: a template that needs them is a program, and
//! `locket-client exec` or `env --format json` serve it.
//! (A general engine such as minijinja or tera would also bring filters
//! that can print a value somewhere unexpected; the issue asked for a
//! small well-kept crate *or* a strict minimal syntax, and this is ~100
//! lines with its tests.)

use zeroize::Zeroizing;

use crate::secret_set::SecretSet;

/// A template problem, naming the template, the line and the fix. Never a
/// secret value: only names and template text positions.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum TemplateError {
    #[error(
        "template {template}, line {line}: `{{{{` is not closed by `}}}}`; write a literal `{{{{` as {{{{ \"{{{{\" }}}}"
    )]
    Unclosed { template: String, line: usize },
    #[error(
        "template {template}, line {line}: empty placeholder; write {{{{ NAME }}}} with a secret's name"
    )]
    Empty { template: String, line: usize },
    #[error(
        "template {template}, line {line}: {name:?} is not a secret name (no spaces, quotes or braces); write {{{{ NAME }}}} or a literal as {{{{ \"text\" }}}}"
    )]
    BadName {
        template: String,
        line: usize,
        name: String,
    },
    #[error(
        "template {template}, line {line}: unknown secret {name:?}; it is not among the secrets fetched for it ({available}); add it to the secrets asked for, or fix the name"
    )]
    Unknown {
        template: String,
        line: usize,
        name: String,
        available: String,
    },
    #[error(
        "template {template}, line {line}: unknown format {format:?} for {name:?}; use json, yaml, shell, ini or line"
    )]
    UnknownFormat {
        template: String,
        line: usize,
        name: String,
        format: String,
    },
    #[error(
        "template {template}, line {line}: the value of {name:?} has a control character (a newline, a carriage return or NUL), which `| {format}` refuses: it would add a line or end the value early; nothing was written. Fix the value, or use a format that escapes (`| json`)"
    )]
    Unsafe {
        template: String,
        line: usize,
        name: String,
        format: &'static str,
    },
    #[error("cannot read template {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Secret {
        name: String,
        line: usize,
        format: Option<Format>,
    },
}

/// How a value is written into a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// A JSON string (also a YAML double-quoted scalar).
    Json,
    Yaml,
    /// A single-quoted POSIX shell word.
    Shell,
    /// As it is, refused with a control character.
    Ini,
    Line,
}

impl Format {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "json" => Self::Json,
            "yaml" => Self::Yaml,
            "shell" => Self::Shell,
            "ini" => Self::Ini,
            "line" => Self::Line,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Yaml => "yaml",
            Self::Shell => "shell",
            Self::Ini => "ini",
            Self::Line => "line",
        }
    }

    /// `value` written for this format, or `None` when it refuses it.
    fn write(self, value: &str) -> Option<Zeroizing<String>> {
        match self {
            Self::Json | Self::Yaml => {
                let mut out = Zeroizing::new(String::with_capacity(value.len() * 6 + 2));
                out.push('"');
                for c in value.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        '\t' => out.push_str("\\t"),
                        c if c.is_control() => {
                            let _ = std::fmt::Write::write_fmt(
                                &mut *out,
                                format_args!("\\u{:04x}", c as u32),
                            );
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
                Some(out)
            }
            Self::Shell => {
                let mut out = Zeroizing::new(String::with_capacity(value.len() * 4 + 2));
                out.push('\'');
                for c in value.chars() {
                    if c == '\'' {
                        out.push_str("'\\''");
                    } else {
                        out.push(c);
                    }
                }
                out.push('\'');
                Some(out)
            }
            Self::Ini | Self::Line => {
                if value.chars().any(char::is_control) {
                    None
                } else {
                    Some(Zeroizing::new(value.to_owned()))
                }
            }
        }
    }
}

/// A parsed template. Holds template text and secret names, never values.
#[derive(Debug, Clone)]
pub struct Template {
    label: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; `label` names the template in errors (its file).
    pub fn parse(label: &str, text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut line = 1;
        while let Some(open) = rest.find("{{") {
            let (before, after) = rest.split_at(open);
            line += before.matches('\n').count();
            if !before.is_empty() {
                parts.push(Part::Text(before.to_owned()));
            }
            let inner_and_rest = &after[2..];
            let close = inner_and_rest.find("}}").ok_or(TemplateError::Unclosed {
                template: label.to_owned(),
                line,
            })?;
            let inner = &inner_and_rest[..close];
            let trimmed = inner.trim();
            if trimmed.is_empty() {
                return Err(TemplateError::Empty {
                    template: label.to_owned(),
                    line,
                });
            }
            if let Some(literal) = trimmed
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|l| !l.contains('"'))
            {
                parts.push(Part::Text(literal.to_owned()));
            } else {
                let (name, format) = match trimmed.split_once('|') {
                    Some((name, format)) => (name.trim(), Some(format.trim())),
                    None => (trimmed, None),
                };
                if name.is_empty()
                    || name
                        .chars()
                        .any(|c| c.is_whitespace() || matches!(c, '"' | '{' | '}' | '\'' | '|'))
                {
                    return Err(TemplateError::BadName {
                        template: label.to_owned(),
                        line,
                        name: trimmed.to_owned(),
                    });
                }
                let format = match format {
                    None => None,
                    Some(f) => {
                        Some(
                            Format::parse(f).ok_or_else(|| TemplateError::UnknownFormat {
                                template: label.to_owned(),
                                line,
                                name: name.to_owned(),
                                format: f.to_owned(),
                            })?,
                        )
                    }
                };
                parts.push(Part::Secret {
                    name: name.to_owned(),
                    line,
                    format,
                });
            }
            line += inner.matches('\n').count();
            rest = &inner_and_rest[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self {
            label: label.to_owned(),
            parts,
        })
    }

    /// Reads and parses the template file at `path`.
    pub fn read(path: &std::path::Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The secret names the template uses, in order of first use.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for part in &self.parts {
            if let Part::Secret { name, .. } = part
                && !names.contains(&name.as_str())
            {
                names.push(name);
            }
        }
        names
    }

    /// The template with every placeholder replaced, in zeroizing memory
    /// (allocated once at its final size, so no partial copy is left in a
    /// freed buffer).
    pub fn render(&self, secrets: &SecretSet) -> Result<Zeroizing<String>, TemplateError> {
        // Values written for a format, by part (kept until joined).
        let mut written: Vec<Option<Zeroizing<String>>> = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            let Part::Secret { name, line, format } = part else {
                written.push(None);
                continue;
            };
            let value = secrets
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.expose())
                .ok_or_else(|| TemplateError::Unknown {
                    template: self.label.clone(),
                    line: *line,
                    name: name.clone(),
                    available: if secrets.is_empty() {
                        "none".to_owned()
                    } else {
                        secrets
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                })?;
            written.push(match format {
                None => None,
                Some(f) => Some(f.write(value).ok_or_else(|| TemplateError::Unsafe {
                    template: self.label.clone(),
                    line: *line,
                    name: name.clone(),
                    format: f.name(),
                })?),
            });
        }
        let mut pieces = Vec::with_capacity(self.parts.len());
        for (part, written) in self.parts.iter().zip(&written) {
            pieces.push(match (part, written) {
                (_, Some(w)) => w.as_str(),
                (Part::Text(text), None) => text.as_str(),
                (Part::Secret { name, .. }, None) => secrets
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.expose())
                    .unwrap_or_default(),
            });
        }
        let mut out = Zeroizing::new(String::with_capacity(pieces.iter().map(|p| p.len()).sum()));
        pieces.iter().for_each(|p| out.push_str(p));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;

    fn secrets() -> SecretSet {
        SecretSet::from(vec![
            ("DB_PASSWORD".into(), "hunter2".into()),
            ("db/url".into(), "postgres://x".into()),
        ])
    }

    #[test]
    fn placeholders_literals_and_text() {
        let t =
            Template::parse("t", "a={{DB_PASSWORD}}\nb={{ db/url }} c={{ \"{{\" }}x}}\n").unwrap();
        assert_eq!(t.names(), vec!["DB_PASSWORD", "db/url"]);
        assert_eq!(
            t.render(&secrets()).unwrap().as_str(),
            "a=hunter2\nb=postgres://x c={{x}}\n"
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it_and_the_line() {
        let t = Template::parse("app.ini", "x\ny\npw = {{ DB_PASSWORT }}\n").unwrap();
        let e = t.render(&secrets()).unwrap_err().to_string();
        assert!(e.contains("app.ini, line 3"), "{e}");
        assert!(e.contains("\"DB_PASSWORT\""), "{e}");
        assert!(e.contains("DB_PASSWORD, db/url"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        let e = Template::parse("t", "a\n{{ DB_PASSWORD\n").unwrap_err();
        assert!(matches!(e, TemplateError::Unclosed { line: 2, .. }), "{e}");
        let e = Template::parse("t", "{{  }}").unwrap_err();
        assert!(matches!(e, TemplateError::Empty { .. }), "{e}");
        let e = Template::parse("t", "{{ a b }}").unwrap_err();
        assert!(matches!(e, TemplateError::BadName { .. }), "{e}");
    }

    /// A value written for its format cannot break out of its place; one
    /// that `ini`/`line` cannot hold is refused by name, never shown.
    #[test]
    fn formats_escape_or_refuse_what_would_break_out() {
        let s = SecretSet::from(vec![
            ("V".to_string(), SecretValue::from("a\"b\\c\nd'e\u{1}")),
            ("PLAIN".to_string(), SecretValue::from("ok value")),
        ]);
        let t = Template::parse(
            "t",
            "j={{ V | json }}\ny={{V|yaml}}\ns={{ V | shell }}\ni={{ PLAIN | ini }}\n",
        )
        .unwrap();
        assert_eq!(
            t.render(&s).unwrap().as_str(),
            "j=\"a\\\"b\\\\c\\nd'e\\u0001\"\ny=\"a\\\"b\\\\c\\nd'e\\u0001\"\ns='a\"b\\c\nd'\\''e\u{1}'\ni=ok value\n"
        );
        // The JSON form reads back as the value.
        let json = &t.render(&s).unwrap()[2..];
        let back: String = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(back, "a\"b\\c\nd'e\u{1}");
        for format in ["ini", "line"] {
            let t =
                Template::parse("app.ini", &format!("x\npw = {{{{ V | {format} }}}}\n")).unwrap();
            let e = t.render(&s).unwrap_err().to_string();
            assert!(
                e.contains("app.ini, line 2") && e.contains("\"V\"") && e.contains(format),
                "{e}"
            );
            assert!(!e.contains("a\"b"), "{e}");
        }
        let e = Template::parse("t", "{{ V | toml }}").unwrap_err();
        assert!(matches!(e, TemplateError::UnknownFormat { .. }), "{e}");
        let e = Template::parse("t", "{{ | json }}").unwrap_err();
        assert!(matches!(e, TemplateError::BadName { .. }), "{e}");
    }

    #[test]
    fn lines_are_counted_across_placeholders() {
        let t = Template::parse("t", "{{ A }}\n{{\nB }}\n{{ C }}").unwrap();
        let e = t
            .render(&SecretSet::from(vec![
                ("A".into(), "1".into()),
                ("B".into(), "2".into()),
            ]))
            .unwrap_err();
        assert!(matches!(e, TemplateError::Unknown { line: 4, .. }), "{e}");
    }
}
