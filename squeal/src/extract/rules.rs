//! Row rules: for each changed row of a rule's `database`.`table` (either may be `*`), one
//! key per template (syntax in `config::template`) from the after image (INSERT), the
//! before image (DELETE), or both (UPDATE: a changed column invalidates the old and the new
//! key). A row whose placeholder column is NULL or absent from the image yields no key for
//! that template. Here templates are bound to a table's columns ([`bind`]) and filters are
//! applied to column text ([`Filter::apply`]).

use crate::config::template::{Filter, Part, Template};
use crate::config::RuleConfig;

impl Filter {
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
    use crate::config::template::Template;

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
