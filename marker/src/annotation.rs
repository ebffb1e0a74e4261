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
//! - Only comments as the server's SQL lexer sees them count: text inside a string literal
//!   (`'...'`, `"..."`, with `\` escapes and doubled quotes), a quoted identifier
//!   (`` `...` ``) or a `-- `/`#` line comment is never an annotation, so a data value can
//!   neither add a key nor hide the annotation that follows it. The body of an executable
//!   comment (`/*! ... */`) is SQL and may hold annotations. [`parse_with`] takes the
//!   session's `sql_mode` quoting rules (`NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`).
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

/// How the statement's session lexes quotes: the two `sql_mode` flags that change where a
/// string literal ends. The binlog records the session's `sql_mode` with each statement
/// (Query events), so a reader can pass the right one; the default is the server default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// Backslash escapes in `'...'` and `"..."` literals (off with `NO_BACKSLASH_ESCAPES`).
    pub backslash_escapes: bool,
    /// `"..."` quotes an identifier, not a string (`ANSI_QUOTES`): no backslash escapes.
    pub ansi_quotes: bool,
}

impl Default for Dialect {
    fn default() -> Self {
        Dialect {
            backslash_escapes: true,
            ansi_quotes: false,
        }
    }
}

impl Dialect {
    /// The dialect of a session with this raw `sql_mode` (bit values shared by MySQL and
    /// MariaDB: `ANSI_QUOTES` = 0x4, `NO_BACKSLASH_ESCAPES` = 0x100000).
    pub fn from_sql_mode(mode: u64) -> Dialect {
        Dialect {
            backslash_escapes: mode & 0x0010_0000 == 0,
            ansi_quotes: mode & 0x4 != 0,
        }
    }
}

/// Iterator over the keys (or token errors) of every annotation comment in `sql`, lexed as
/// the server lexes SQL with the default `sql_mode` (see [`parse_with`]).
pub fn parse(sql: &[u8]) -> Parser<'_> {
    parse_with(sql, Dialect::default())
}

/// Iterator over the keys (or token errors) of every annotation comment in `sql`.
///
/// Only real comments count, found the way the server's lexer finds them: string literals
/// (`'...'` and `"..."`, with `\` escapes unless the dialect says otherwise, and doubled
/// quotes) and quoted identifiers (`` `...` ``) are skipped whole, so no data value can
/// yield a key or hide the annotation after it; `-- ` and `#` line comments are skipped to
/// the end of the line; the body of an executable comment (`/*! ... */`, `/*M! ... */`) is
/// SQL and is lexed as such. An unterminated literal runs to the end of the text.
pub fn parse_with(sql: &[u8], dialect: Dialect) -> Parser<'_> {
    Parser {
        sql,
        pos: 0,
        body: None,
        dialect,
        in_exec: false,
    }
}

/// See [`parse`].
pub struct Parser<'a> {
    sql: &'a [u8],
    pos: usize,
    /// Remaining body of the annotation being read.
    body: Option<&'a [u8]>,
    dialect: Dialect,
    /// Inside the body of an executable comment (`/*! ... */`): its `*/` ends it.
    in_exec: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// End (exclusive) of the quoted run opening at `start` with `q`: doubled `q` stands for
/// one, and with `backslash` a `\` escapes the next byte. Unterminated: the text's end.
fn quoted_end(s: &[u8], start: usize, q: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < s.len() {
        let c = s[i];
        if backslash && c == b'\\' {
            i += 2;
        } else if c == q {
            if s.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// What the lexer found next.
enum Found {
    /// A plain comment whose body runs from `.0` to `.1` (exclusive, before `*/`).
    Comment(usize, usize),
    /// A plain comment that never closes; its body starts at `.0`.
    Unterminated(usize),
}

impl<'a> Parser<'a> {
    /// Lexes from `self.pos` to the next plain `/* ... */` comment, skipping literals,
    /// quoted identifiers, line comments and executable-comment markers.
    fn next_comment(&mut self) -> Option<Found> {
        let s = self.sql;
        let mut i = self.pos;
        while i < s.len() {
            match s[i] {
                b'\'' => i = quoted_end(s, i, b'\'', self.dialect.backslash_escapes),
                b'"' => {
                    let bs = self.dialect.backslash_escapes && !self.dialect.ansi_quotes;
                    i = quoted_end(s, i, b'"', bs)
                }
                b'`' => i = quoted_end(s, i, b'`', false),
                b'#' => {
                    i = s[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(s.len(), |n| i + n + 1)
                }
                b'-' if s.get(i + 1) == Some(&b'-') && s.get(i + 2).is_none_or(|&c| c <= b' ') => {
                    i = s[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(s.len(), |n| i + n + 1)
                }
                b'*' if self.in_exec && s.get(i + 1) == Some(&b'/') => {
                    self.in_exec = false;
                    i += 2;
                }
                b'/' if s.get(i + 1) == Some(&b'*') => {
                    let after = i + 2;
                    if s.get(after) == Some(&b'!')
                        || (s.get(after) == Some(&b'M') && s.get(after + 1) == Some(&b'!'))
                    {
                        // Executable comment: its body is SQL (the version number that may
                        // follow the `!` lexes as a number).
                        self.in_exec = true;
                        i = after + if s[after] == b'!' { 1 } else { 2 };
                        continue;
                    }
                    return Some(match find(&s[after..], b"*/") {
                        Some(close) => {
                            self.pos = after + close + 2;
                            Found::Comment(after, after + close)
                        }
                        None => {
                            self.pos = s.len();
                            Found::Unterminated(after)
                        }
                    });
                }
                _ => i += 1,
            }
        }
        self.pos = s.len();
        None
    }
}

fn is_tagged(body: &[u8]) -> Option<usize> {
    let ws = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let tagged = &body[ws..];
    let is_tag = tagged.starts_with(TAG.as_bytes())
        && tagged
            .get(TAG.len())
            .is_none_or(|b| b.is_ascii_whitespace() || *b == b'*');
    is_tag.then_some(ws + TAG.len())
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
            match self.next_comment()? {
                Found::Comment(from, to) => {
                    if let Some(skip) = is_tagged(&self.sql[from..to]) {
                        self.body = Some(&self.sql[(from + skip).min(to)..to]);
                    }
                }
                Found::Unterminated(from) => {
                    if is_tagged(&self.sql[from..]).is_some() {
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

    #[test]
    fn literals_hide_nothing_and_never_yield_keys() {
        // The two cases of the issue: a data value that looks like an annotation, and an
        // annotation after a literal holding a comment opener.
        assert!(keys("UPDATE t SET note='/* squeal:inv victim:1 */' WHERE id=1").is_empty());
        assert_eq!(
            keys("UPDATE t SET note='x/*y' WHERE id=1 /* squeal:inv user:77 */"),
            vec![Ok(b"user:77".to_vec())]
        );
        assert!(keys(r#"SELECT "/* squeal:inv a */", `/* squeal:inv b */`"#).is_empty());
        assert!(keys(r"SELECT 'it\'s /* squeal:inv a */'").is_empty());
        assert!(keys("SELECT 'it''s /* squeal:inv a */'").is_empty());
        assert_eq!(
            keys(r"SELECT 'a\\' /* squeal:inv k */"),
            vec![Ok(b"k".to_vec())]
        );
        // Line comments hide what follows on their line only.
        assert!(keys("SELECT 1 -- /* squeal:inv a */").is_empty());
        assert!(keys("SELECT 1 # /* squeal:inv a */").is_empty());
        assert_eq!(
            keys("SELECT 1 -- x\n/* squeal:inv a */"),
            vec![Ok(b"a".to_vec())]
        );
        // `--` not followed by a space is two minus signs.
        assert_eq!(
            keys("SELECT 1--1 /* squeal:inv a */"),
            vec![Ok(b"a".to_vec())]
        );
        // Executable comments are SQL: literals inside are literals, annotations count.
        assert!(keys("/*!50001 SELECT '/* squeal:inv a */' */").is_empty());
        assert_eq!(
            keys("/*!50001 SELECT '*/' */ /* squeal:inv a */"),
            vec![Ok(b"a".to_vec())]
        );
        // An unterminated literal runs to the end.
        assert!(keys("SELECT 'abc /* squeal:inv a */").is_empty());
        // NO_BACKSLASH_ESCAPES: a backslash ends nothing; ANSI_QUOTES: "..." is a name.
        let nbe = Dialect::from_sql_mode(0x0010_0000);
        let got: Vec<_> = parse_with(br"SET a='\', b='/* squeal:inv victim */'", nbe).collect();
        assert!(got.is_empty());
        let got: Vec<_> = parse_with(br"SET a='\' /* squeal:inv k */", nbe).collect();
        assert_eq!(got.len(), 1);
        let ansi = Dialect::from_sql_mode(0x4);
        let got: Vec<_> = parse_with(br#"SELECT "a\" /* squeal:inv k */"#, ansi).collect();
        assert_eq!(got.len(), 1);
    }

    /// A literal as a driver writes it for a data value: quotes doubled or backslash-escaped
    /// (either style), backslashes escaped.
    fn quote(v: &[u8], q: u8, doubled: bool) -> Vec<u8> {
        let mut out = vec![q];
        for &b in v {
            if b == b'\\' {
                out.extend_from_slice(b"\\\\");
            } else if b == q {
                if doubled {
                    out.extend_from_slice(&[q, q]);
                } else {
                    out.extend_from_slice(&[b'\\', q]);
                }
            } else {
                out.push(b);
            }
        }
        out.push(q);
        out
    }

    /// Values that stress the lexer: comment openers and closers, quotes, backslashes,
    /// annotation tags and line-comment starters, mixed with arbitrary bytes.
    fn hostile_value() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"/*".to_vec()),
            Just(b"*/".to_vec()),
            Just(b"/* squeal:inv victim:1 */".to_vec()),
            Just(b"squeal:inv".to_vec()),
            Just(b"/*!".to_vec()),
            Just(b"'".to_vec()),
            Just(b"\"".to_vec()),
            Just(b"`".to_vec()),
            Just(b"\\".to_vec()),
            Just(b"-- ".to_vec()),
            Just(b"#".to_vec()),
            Just(b"\n".to_vec()),
            prop::collection::vec(any::<u8>(), 0..4),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn no_literal_yields_a_key_and_none_hides_an_annotation(
            vals in prop::collection::vec((hostile_value(), 0u8..3, any::<bool>()), 1..4),
            key in legal_key(),
        ) {
            let mut sql = b"UPDATE t SET ".to_vec();
            for (i, (v, q, doubled)) in vals.iter().enumerate() {
                if i > 0 {
                    sql.extend_from_slice(b", ");
                }
                sql.extend_from_slice(format!("c{i}=").as_bytes());
                let q = [b'\'', b'"', b'`'][*q as usize];
                // Identifiers only double their quote.
                sql.extend_from_slice(&quote(v, q, *doubled || q == b'`'));
            }
            sql.extend_from_slice(b" WHERE id=1");
            prop_assert_eq!(parse(&sql).count(), 0, "{}", String::from_utf8_lossy(&sql));
            let c = comment([&key]).unwrap();
            sql.push(b' ');
            sql.extend_from_slice(c.as_bytes());
            let got: Vec<Vec<u8>> = parse(&sql).map(|r| r.unwrap().into_owned()).collect();
            prop_assert_eq!(got, vec![key]);
        }

        #[test]
        fn round_trips_any_legal_keys(ks in prop::collection::vec(legal_key(), 1..8),
                                      before in "[ -~]{0,20}", after in "[ -~]{0,20}") {
            let c = comment(&ks).unwrap();
            prop_assert!(c.is_ascii());
            // Surrounding SQL that opens no comment or literal of its own (those are the
            // lexer property below).
            let clean = |s: &str| s.replace(['/', '\'', '"', '`', '#', '-', '\\'], "");
            let before = clean(&before);
            let after = clean(&after);
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
