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
//! - Everything else is copied unchanged. An opened `{{` without its `}}`
//!   is an error naming the line.
//!
//! No expressions, loops or escaping modes: a template that needs them is
//! a program, and `locket-client exec` or `env --format json` serve it.
//! (A general engine such as minijinja or tera would also bring filters
//! that can print a value somewhere unexpected; the issue asked for a
//! small well-kept crate *or* a strict minimal syntax, and this is ~100
//! lines with its tests.)

use zeroize::Zeroizing;

use crate::secret::SecretValue;

/// A template problem, naming the template, the line and the fix. Never a
/// secret value: only names and template text positions.
#[derive(Debug, thiserror::Error)]
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
    #[error("cannot read template {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Secret { name: String, line: usize },
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
            } else if trimmed
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '"' | '{' | '}' | '\''))
            {
                return Err(TemplateError::BadName {
                    template: label.to_owned(),
                    line,
                    name: trimmed.to_owned(),
                });
            } else {
                parts.push(Part::Secret {
                    name: trimmed.to_owned(),
                    line,
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
    pub fn render(
        &self,
        secrets: &[(String, SecretValue)],
    ) -> Result<Zeroizing<String>, TemplateError> {
        let mut pieces = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            pieces.push(match part {
                Part::Text(text) => text.as_str(),
                Part::Secret { name, line } => secrets
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
                    })?,
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

    fn secrets() -> Vec<(String, SecretValue)> {
        vec![
            ("DB_PASSWORD".into(), "hunter2".into()),
            ("db/url".into(), "postgres://x".into()),
        ]
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

    #[test]
    fn lines_are_counted_across_placeholders() {
        let t = Template::parse("t", "{{ A }}\n{{\nB }}\n{{ C }}").unwrap();
        let e = t
            .render(&[("A".into(), "1".into()), ("B".into(), "2".into())])
            .unwrap_err();
        assert!(matches!(e, TemplateError::Unknown { line: 4, .. }), "{e}");
    }
}
