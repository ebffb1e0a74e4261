//! Row rules: key templates over column values, such as `user:{id}` or
//! `user_by_email:{email}`.
//!
//! A template is literal text with `{column}` placeholders; `{{` and `}}` stand for braces.
//! A placeholder may pass the value through filters, applied left to right:
//! `{email|lower}`, `{payload|sha1}`, `{payload|lower|sha1}` (see [`Filter`]), so that values
//! that are not legal memcache keys as they are (binary, long, with spaces) still make an
//! explicit key that an application can build the same way.
//! A rule applies to `database`.`table` (either may be `*`). For each changed row it yields
//! one key per template from the after image (INSERT), the before image (DELETE), or both
//! (UPDATE: a changed column invalidates the old and the new key). A row whose placeholder
//! column is NULL or absent from the image yields no key for that template.

use crate::config::RuleConfig;

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

    /// Replaces `v` with the filtered value (`tmp` is scratch space).
    pub fn apply(self, v: &mut Vec<u8>, tmp: &mut Vec<u8>) {
        fn hex_into(bytes: &[u8], out: &mut Vec<u8>) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.reserve(bytes.len() * 2);
            for b in bytes {
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        tmp.clear();
        match self {
            Filter::Hex => hex_into(v, tmp),
            Filter::Lower | Filter::Upper => match std::str::from_utf8(v) {
                Ok(s) if !s.is_ascii() => {
                    let c = if self == Filter::Lower {
                        s.to_lowercase()
                    } else {
                        s.to_uppercase()
                    };
                    tmp.extend_from_slice(c.as_bytes());
                }
                _ => {
                    if self == Filter::Lower {
                        v.make_ascii_lowercase()
                    } else {
                        v.make_ascii_uppercase()
                    }
                    return;
                }
            },
            Filter::Sha1 => {
                use sha1::Digest;
                hex_into(&sha1::Sha1::digest(&v[..]), tmp)
            }
            Filter::Sha256 => {
                use sha2::Digest;
                hex_into(&sha2::Sha256::digest(&v[..]), tmp)
            }
            Filter::Md5 => {
                use md5::Digest;
                hex_into(&md5::Md5::digest(&v[..]), tmp)
            }
        }
        std::mem::swap(v, tmp);
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

/// A rule ready to match tables.
#[derive(Debug, Clone)]
pub struct Rule {
    pub database: String,
    pub table: String,
    pub templates: Vec<Template>,
}

impl Rule {
    pub fn new(c: &RuleConfig) -> Result<Rule, String> {
        Ok(Rule {
            database: c.database.clone(),
            table: c.table.clone(),
            templates: c
                .keys
                .iter()
                .map(|k| Template::parse(k))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, db: &str, table: &str) -> bool {
        (self.database == "*" || self.database == db) && (self.table == "*" || self.table == table)
    }
}

/// A template bound to a table's column positions.
#[derive(Debug, Clone)]
pub enum BoundPart {
    Lit(Vec<u8>),
    /// Column position and the filters its value passes through.
    Col(usize, Vec<Filter>),
}

/// Binds `t` to the column `names` of one table; `None` if a column is missing there.
pub fn bind(t: &Template, names: &[String]) -> Option<Vec<BoundPart>> {
    t.parts
        .iter()
        .map(|p| match p {
            Part::Lit(l) => Some(BoundPart::Lit(l.clone())),
            Part::Col(c, f) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(c))
                .map(|i| BoundPart::Col(i, f.clone())),
        })
        .collect()
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

    fn filtered(v: &[u8], f: &[Filter]) -> String {
        let mut v = v.to_vec();
        let mut tmp = Vec::new();
        for f in f {
            f.apply(&mut v, &mut tmp);
        }
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn filters_match_reference_values() {
        assert_eq!(filtered(b"\x00\xffA", &[Filter::Hex]), "00ff41");
        assert_eq!(filtered("ÉcoLE".as_bytes(), &[Filter::Lower]), "école");
        assert_eq!(filtered(b"MiXeD", &[Filter::Upper]), "MIXED");
        // Reference digests (sha1sum / sha256sum / md5sum of "abc").
        assert_eq!(
            filtered(b"abc", &[Filter::Sha1]),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            filtered(b"abc", &[Filter::Sha256]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            filtered(b"abc", &[Filter::Md5]),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            filtered(b"ABC", &[Filter::Lower, Filter::Sha1]),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn binds_by_name() {
        let t = Template::parse("u:{ID}/{email}").unwrap();
        let names = vec!["id".to_string(), "email".to_string()];
        let b = bind(&t, &names).unwrap();
        assert!(matches!(b[1], BoundPart::Col(0, _)));
        assert!(matches!(b[3], BoundPart::Col(1, _)));
        assert!(bind(&t, &names[..1]).is_none());
    }
}
