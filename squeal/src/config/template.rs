//! Key templates, as `[[extract.rule]] keys` writes them: `user:{id}` or
//! `user_by_email:{email}`. This is the syntax only (parsed when the config is validated);
//! `extract::rules` binds templates to a table's columns and applies the filters.
//!
//! A template is literal text with `{column}` placeholders; `{{` and `}}` stand for braces.
//! A placeholder may pass the value through filters, applied left to right:
//! `{email|lower}`, `{payload|sha1}`, `{payload|lower|sha1}` (see [`Filter`]), so that values
//! that are not legal memcache keys as they are (binary, long, with spaces) still make an
//! explicit key that an application can build the same way.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(Vec<u8>),
    /// A column, with the filters its value passes through (in order).
    Col(String, Vec<Filter>),
}

/// A transformation of a column's key text (its canonical text form, see the README's
/// "Key text of column values") before it goes into the key. Digests and `hex` give
/// lower-case hexadecimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every byte as two lower-case hex digits.
    Hex,
    /// Lower case: Unicode (as Rust's `str::to_lowercase`, Python's `str.lower`) when the
    /// text is UTF-8, ASCII letters only otherwise.
    Lower,
    /// Upper case, the same way as `lower`.
    Upper,
    /// SHA-1 digest, 40 hex digits.
    Sha1,
    /// SHA-256 digest, 64 hex digits.
    Sha256,
    /// MD5 digest, 32 hex digits.
    Md5,
}

impl Filter {
    /// Every filter name, as written after `|`.
    pub const NAMES: &'static [&'static str] = &["hex", "lower", "upper", "sha1", "sha256", "md5"];

    pub fn parse(name: &str) -> Option<Filter> {
        Some(match name {
            "hex" => Filter::Hex,
            "lower" => Filter::Lower,
            "upper" => Filter::Upper,
            "sha1" => Filter::Sha1,
            "sha256" => Filter::Sha256,
            "md5" => Filter::Md5,
            _ => return None,
        })
    }
}

/// A parsed key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub source: String,
    pub parts: Vec<Part>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'{' if b.get(i + 1) == Some(&b'{') => {
                    lit.push(b'{');
                    i += 2;
                }
                b'}' if b.get(i + 1) == Some(&b'}') => {
                    lit.push(b'}');
                    i += 2;
                }
                b'{' => {
                    let end = s[i + 1..]
                        .find('}')
                        .ok_or_else(|| format!("unclosed {{ at byte {i}"))?;
                    let inner = &s[i + 1..i + 1 + end];
                    let mut pieces = inner.split('|');
                    let name = pieces.next().unwrap_or("").trim();
                    if name.is_empty() || inner.contains('{') {
                        return Err(format!("bad column name at byte {i}"));
                    }
                    let filters = pieces
                        .map(|f| {
                            Filter::parse(f.trim()).ok_or_else(|| {
                                format!(
                                    "unknown filter {:?} in {{{inner}}} (filters: {})",
                                    f.trim(),
                                    Filter::NAMES.join(", ")
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Col(name.to_string(), filters));
                    i += end + 2;
                }
                b'}' => return Err(format!("unmatched }} at byte {i}")),
                c => {
                    if c <= b' ' || c == 0x7f {
                        return Err(format!("control character or space at byte {i}"));
                    }
                    lit.push(c);
                    i += 1;
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if !parts.iter().any(|p| matches!(p, Part::Col(..))) {
            return Err("a template needs at least one {column}".into());
        }
        Ok(Template {
            source: s.to_string(),
            parts,
        })
    }

    /// The column names the template uses, in order (with repeats), as written.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Col(c, _) => Some(c.as_str()),
            Part::Lit(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_templates() {
        let t = Template::parse("user:{id}:{{x}}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Lit(b"user:".to_vec()),
                Part::Col("id".into(), vec![]),
                Part::Lit(b":{x}".to_vec())
            ]
        );
        assert!(Template::parse("user:{id").is_err());
        assert!(Template::parse("user:id}").is_err());
        assert!(Template::parse("user").is_err());
        assert!(Template::parse("a b{id}").is_err());
        assert!(Template::parse("{}").is_err());
    }

    #[test]
    fn filters_parse_chain_and_list_columns() {
        let t = Template::parse("p:{payload|lower|sha1}:{ id | hex }").unwrap();
        assert_eq!(
            t.parts[1],
            Part::Col("payload".into(), vec![Filter::Lower, Filter::Sha1])
        );
        assert_eq!(t.parts[3], Part::Col("id".into(), vec![Filter::Hex]));
        assert_eq!(t.columns().collect::<Vec<_>>(), ["payload", "id"]);
        let e = Template::parse("p:{payload|sha3}").unwrap_err();
        assert!(
            e.contains("unknown filter \"sha3\"") && e.contains("sha1"),
            "{e}"
        );
        assert!(Template::parse("p:{|hex}").is_err());
    }
}
