//! The SQL annotation format: invalidation keys embedded in a comment of the statement an
//! application writes, read back by `squeal` from the binlog's statement text (MariaDB
//! ANNOTATE_ROWS events, MySQL Rows_query events, statement-format Query events).
//!
//! # Format (version 1)
//!
//! ```text
//! /* squeal:inv <token> <token> ... */
//! ```
//!
//! - The comment opens with `/*`, then optional ASCII whitespace, then the exact tag
//!   `squeal:inv`, then one or more tokens separated by ASCII whitespace (space, tab, CR, LF),
//!   then `*/`.
//! - Each token is one memcache key (a legal key: 1..=250 bytes, no control characters, no
//!   space; see [`crate::key::validate`]), percent-escaped: every byte in the set
//!   [`ESCAPED`] (`%`, `*`, `?`, `'`, `"`, `` ` ``, `\`) and every byte >= 0x80 is written as
//!   `%` followed by two hex digits (upper case when encoding; the parser accepts either
//!   case). All other bytes are written as they are. An escaped token therefore is plain
//!   printable ASCII, cannot end the comment (`*` never appears unescaped), survives any
//!   client character set, and does not look like a placeholder or a quote to a driver.
//! - A statement may hold several annotation comments anywhere (before, inside or after the
//!   SQL); their keys add up. Other comments are ignored.
//! - The parser reports each bad token (bad escape, not a legal key once decoded) on its
//!   own and goes on with the next one; an annotation with no closing `*/` is one error.
//!
//! # Encoding from other languages
//!
//! ```text
//! def squeal_comment(keys):               # keys: list of bytes, each a legal memcache key
//!     out = []
//!     for k in keys:
//!         out.append("".join(
//!             "%%%02X" % b if b >= 0x80 or chr(b) in "%*?'\"`\\" else chr(b) for b in k))
//!     return "/* squeal:inv " + " ".join(out) + " */"
//! ```
//!
//! Example: keys `user:42` and `100%*/` give `/* squeal:inv user:42 100%25%2A/ */`.
//! Note that some clients strip comments (the `mysql` command line client does unless it is
//! given `--comments`); drivers send them.

use std::borrow::Cow;

use crate::key::{validate, KeyError};

/// The tag that opens an annotation comment.
pub const TAG: &str = "squeal:inv";

/// Bytes below 0x80 that an encoder escapes (every byte >= 0x80 is escaped too).
pub const ESCAPED: &[u8] = b"%*?'\"`\\";

/// What is wrong with one annotation token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("bad escape at byte {0} of token {1:?}")]
    BadEscape(usize, String),
    #[error("token {0:?} is not a legal memcache key: {1}")]
    BadKey(String, KeyError),
    #[error("annotation comment is not closed with */")]
    Unterminated,
}

fn needs_escape(b: u8) -> bool {
    b >= 0x80 || ESCAPED.contains(&b)
}

/// Appends the escaped form of `key` to `out`. Fails if `key` is not a legal memcache key.
pub fn encode_key(key: &[u8], out: &mut String) -> Result<(), KeyError> {
    validate(key)?;
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key {
        if needs_escape(b) {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
    Ok(())
}

/// The whole comment for `keys`: `/* squeal:inv k1 k2 */`. Fails on the first illegal key, or
/// if `keys` is empty.
pub fn comment<I, K>(keys: I) -> Result<String, KeyError>
where
    I: IntoIterator<Item = K>,
    K: AsRef<[u8]>,
{
    let mut out = String::from("/* ");
    out.push_str(TAG);
    let mut any = false;
    for key in keys {
        out.push(' ');
        encode_key(key.as_ref(), &mut out)?;
        any = true;
    }
    if !any {
        return Err(KeyError::Empty);
    }
    out.push_str(" */");
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one token into a key (borrowed when it holds no escape).
pub fn decode_token(token: &[u8]) -> Result<Cow<'_, [u8]>, AnnotationError> {
    let lossy = || String::from_utf8_lossy(token).into_owned();
    let key: Cow<'_, [u8]> = if token.contains(&b'%') {
        let mut out = Vec::with_capacity(token.len());
        let mut i = 0;
        while i < token.len() {
            if token[i] == b'%' {
                match (
                    token.get(i + 1).and_then(|&b| hex(b)),
                    token.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(AnnotationError::BadEscape(i, lossy())),
                }
                i += 3;
            } else {
                out.push(token[i]);
                i += 1;
            }
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(token)
    };
    validate(&key).map_err(|e| AnnotationError::BadKey(lossy(), e))?;
    Ok(key)
}

/// Iterator over the keys (or token errors) of every annotation comment in `sql`.
pub fn parse(sql: &[u8]) -> Parser<'_> {
    Parser {
        sql,
        pos: 0,
        body: None,
    }
}

/// See [`parse`].
pub struct Parser<'a> {
    sql: &'a [u8],
    pos: usize,
    /// Remaining body of the annotation being read.
    body: Option<&'a [u8]>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<'a> Iterator for Parser<'a> {
    type Item = Result<Cow<'a, [u8]>, AnnotationError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(body) = self.body {
                let start = body.iter().position(|b| !b.is_ascii_whitespace());
                let Some(start) = start else {
                    self.body = None;
                    continue;
                };
                let rest = &body[start..];
                let end = rest
                    .iter()
                    .position(|b| b.is_ascii_whitespace())
                    .unwrap_or(rest.len());
                self.body = Some(&rest[end..]);
                return Some(decode_token(&rest[..end]));
            }
            let rest = &self.sql[self.pos.min(self.sql.len())..];
            let open = find(rest, b"/*")?;
            let after = &rest[open + 2..];
            let ws = after
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(after.len());
            let tagged = &after[ws..];
            let is_tag = tagged.starts_with(TAG.as_bytes())
                && tagged
                    .get(TAG.len())
                    .is_none_or(|b| b.is_ascii_whitespace() || *b == b'*');
            let body_start = self.pos + open + 2 + ws + if is_tag { TAG.len() } else { 0 };
            match find(&self.sql[body_start..], b"*/") {
                Some(close) => {
                    self.pos = body_start + close + 2;
                    if is_tag {
                        self.body = Some(&self.sql[body_start..body_start + close]);
                    }
                }
                None => {
                    self.pos = self.sql.len();
                    if is_tag {
                        return Some(Err(AnnotationError::Unterminated));
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(sql: &str) -> Vec<Result<Vec<u8>, AnnotationError>> {
        parse(sql.as_bytes())
            .map(|r| r.map(|k| k.into_owned()))
            .collect()
    }

    #[test]
    fn documented_example() {
        let c = comment([&b"user:42"[..], b"100%*/"]).unwrap();
        assert_eq!(c, "/* squeal:inv user:42 100%25%2A/ */");
        let sql = format!("UPDATE t SET a=1 {c} WHERE id=42");
        assert_eq!(
            keys(&sql),
            vec![Ok(b"user:42".to_vec()), Ok(b"100%*/".to_vec())]
        );
    }

    #[test]
    fn several_comments_and_other_comments() {
        let sql =
            "/* hint */ INSERT /*squeal:inv a b*/ INTO t /* squeal:inv\tc\n */ VALUES (1) /* x */";
        assert_eq!(
            keys(sql),
            vec![Ok(b"a".to_vec()), Ok(b"b".to_vec()), Ok(b"c".to_vec())]
        );
        assert!(keys("/* squeal:invx a */").is_empty());
        assert!(keys("SELECT 1").is_empty());
    }

    #[test]
    fn bad_tokens_are_reported_and_the_rest_kept() {
        let long = "k".repeat(251);
        let sql = format!("/* squeal:inv good %zz %41%4 {long} also%20bad fine */");
        let got = keys(&sql);
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], Ok(b"good".to_vec()));
        assert!(matches!(got[1], Err(AnnotationError::BadEscape(0, _))));
        assert!(matches!(got[2], Err(AnnotationError::BadEscape(3, _))));
        assert!(matches!(
            got[3],
            Err(AnnotationError::BadKey(_, KeyError::TooLong(251)))
        ));
        assert!(matches!(
            got[4],
            Err(AnnotationError::BadKey(_, KeyError::BadByte(4)))
        ));
        assert_eq!(got[5], Ok(b"fine".to_vec()));
        assert_eq!(
            keys("/* squeal:inv a"),
            vec![Err(AnnotationError::Unterminated)]
        );
    }

    #[test]
    fn encoder_refuses_illegal_keys() {
        assert_eq!(comment([b"a b"]), Err(KeyError::BadByte(1)));
        assert_eq!(comment(Vec::<&[u8]>::new()), Err(KeyError::Empty));
    }

    fn legal_key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                0x21u8..=0x7e,
                0x80u8..=0xff,
                Just(b'*'),
                Just(b'/'),
                Just(b'%')
            ],
            1..=250,
        )
    }

    proptest! {
        #[test]
        fn round_trips_any_legal_keys(ks in prop::collection::vec(legal_key(), 1..8),
                                      before in "[ -~]{0,20}", after in "[ -~]{0,20}") {
            let c = comment(&ks).unwrap();
            prop_assert!(c.is_ascii());
            // Surrounding SQL that holds no comment opener of its own.
            let before = before.replace('/', "");
            let after = after.replace('/', "");
            let sql = format!("{before} {c} {after}");
            let got: Vec<Vec<u8>> = parse(sql.as_bytes()).map(|r| r.unwrap().into_owned()).collect();
            prop_assert_eq!(got, ks);
        }

        #[test]
        fn never_panics(sql in prop::collection::vec(any::<u8>(), 0..300)) {
            for k in parse(&sql).flatten() {
                prop_assert!(validate(&k).is_ok());
            }
        }
    }
}
