//! Row rules: key templates over column values, such as `user:{id}` or
//! `user_by_email:{email}`.
//!
//! A template is literal text with `{column}` placeholders; `{{` and `}}` stand for braces.
//! A rule applies to `database`.`table` (either may be `*`). For each changed row it yields
//! one key per template from the after image (INSERT), the before image (DELETE), or both
//! (UPDATE: a changed column invalidates the old and the new key). A row whose placeholder
//! column is NULL or absent from the image yields no key for that template.

use crate::config::RuleConfig;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(Vec<u8>),
    Col(String),
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
                    let name = &s[i + 1..i + 1 + end];
                    if name.is_empty() || name.contains('{') {
                        return Err(format!("bad column name at byte {i}"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Col(name.to_string()));
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
        if !parts.iter().any(|p| matches!(p, Part::Col(_))) {
            return Err("a template needs at least one {column}".into());
        }
        Ok(Template {
            source: s.to_string(),
            parts,
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
    Col(usize),
}

/// Binds `t` to the column `names` of one table; `None` if a column is missing there.
pub fn bind(t: &Template, names: &[String]) -> Option<Vec<BoundPart>> {
    t.parts
        .iter()
        .map(|p| match p {
            Part::Lit(l) => Some(BoundPart::Lit(l.clone())),
            Part::Col(c) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(c))
                .map(BoundPart::Col),
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
                Part::Col("id".into()),
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
    fn binds_by_name() {
        let t = Template::parse("u:{ID}/{email}").unwrap();
        let names = vec!["id".to_string(), "email".to_string()];
        let b = bind(&t, &names).unwrap();
        assert!(matches!(b[1], BoundPart::Col(0)));
        assert!(matches!(b[3], BoundPart::Col(1)));
        assert!(bind(&t, &names[..1]).is_none());
    }
}
