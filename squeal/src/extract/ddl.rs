//! Statements that change a table's rows without row images in the binlog: TRUNCATE, DROP
//! TABLE, RENAME TABLE, ALTER TABLE ... RENAME, CREATE OR REPLACE TABLE, DROP DATABASE.
//! The server logs them as statement text (QUERY events) even in ROW format, so the keys of
//! the rows they remove cannot be computed; squeal must notice them by parsing the text.
//!
//! The parser reads the statement as the server does, far enough to name its tables:
//! comments (`/* */`, `-- `, `#`) are skipped, versioned comments (`/*! ... */`,
//! `/*M! ... */`) are read as code, names may be qualified (`db.t`) and backquoted (with
//! doubled backquotes inside), string literals are skipped whole.

/// A table a statement resets: database (from the statement or the event's default
/// schema), table (`*` for DROP DATABASE: every table), and the statement kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub database: String,
    pub table: String,
    pub verb: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A bare word (upper-cased copy kept for keyword tests) or a backquoted name.
    Word {
        text: String,
        quoted: bool,
    },
    Dot,
    Comma,
    Other,
}

fn tokens(sql: &[u8]) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    let n = sql.len();
    while i < n {
        let c = sql[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if sql[i..].starts_with(b"/*!") || sql[i..].starts_with(b"/*M!") {
            // Versioned comment: its content is code. Skip the marker and version digits;
            // the closing `*/` is skipped where it appears.
            i += if sql[i + 2] == b'M' { 4 } else { 3 };
            while i < n && sql[i].is_ascii_digit() {
                i += 1;
            }
        } else if sql[i..].starts_with(b"*/") {
            i += 2;
        } else if sql[i..].starts_with(b"/*") {
            match sql[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(e) => i += 2 + e + 2,
                None => break,
            }
        } else if c == b'#'
            || (sql[i..].starts_with(b"--")
                && sql.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()))
        {
            while i < n && sql[i] != b'\n' {
                i += 1;
            }
        } else if c == b'\'' || c == b'"' {
            i += 1;
            while i < n {
                if sql[i] == b'\\' {
                    i += 2;
                } else if sql[i] == c {
                    if sql.get(i + 1) == Some(&c) {
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(Tok::Other);
        } else if c == b'`' {
            let mut name = Vec::new();
            i += 1;
            while i < n {
                if sql[i] == b'`' {
                    if sql.get(i + 1) == Some(&b'`') {
                        name.push(b'`');
                        i += 2;
                    } else {
                        i += 1;
                        break;
                    }
                } else {
                    name.push(sql[i]);
                    i += 1;
                }
            }
            out.push(Tok::Word {
                text: String::from_utf8_lossy(&name).into_owned(),
                quoted: true,
            });
        } else if c == b'.' {
            out.push(Tok::Dot);
            i += 1;
        } else if c == b',' {
            out.push(Tok::Comma);
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            let s = i;
            while i < n
                && (sql[i].is_ascii_alphanumeric()
                    || matches!(sql[i], b'_' | b'$')
                    || sql[i] >= 0x80)
            {
                i += 1;
            }
            out.push(Tok::Word {
                text: String::from_utf8_lossy(&sql[s..i]).into_owned(),
                quoted: false,
            });
        } else {
            out.push(Tok::Other);
            i += 1;
        }
    }
    out
}

struct P<'a> {
    t: &'a [Tok],
    i: usize,
    db: &'a str,
}

impl P<'_> {
    fn kw(&self, k: &str) -> bool {
        matches!(self.t.get(self.i), Some(Tok::Word { text, quoted: false }) if text.eq_ignore_ascii_case(k))
    }
    fn eat(&mut self, k: &str) -> bool {
        let y = self.kw(k);
        if y {
            self.i += 1;
        }
        y
    }
    fn eat_all(&mut self, ks: &[&str]) -> bool {
        let save = self.i;
        for k in ks {
            if !self.eat(k) {
                self.i = save;
                return false;
            }
        }
        true
    }
    fn word(&mut self) -> Option<String> {
        match self.t.get(self.i) {
            Some(Tok::Word { text, .. }) => {
                self.i += 1;
                Some(text.clone())
            }
            _ => None,
        }
    }
    /// `name` or `db.name`.
    fn table(&mut self) -> Option<(String, String)> {
        let a = self.word()?;
        if self.t.get(self.i) == Some(&Tok::Dot) {
            self.i += 1;
            let b = self.word()?;
            Some((a, b))
        } else {
            Some((self.db.to_string(), a))
        }
    }
    fn comma(&mut self) -> bool {
        let y = self.t.get(self.i) == Some(&Tok::Comma);
        if y {
            self.i += 1;
        }
        y
    }
}

/// The tables `sql` resets; `default_db` is the QUERY event's schema (the session's
/// current database). Empty for any other statement.
pub fn reset_tables(sql: &[u8], default_db: &str) -> Vec<Reset> {
    let toks = tokens(sql);
    let mut p = P {
        t: &toks,
        i: 0,
        db: default_db,
    };
    let mut out = Vec::new();
    let mut push = |(database, table): (String, String), verb| {
        out.push(Reset {
            database,
            table,
            verb,
        })
    };
    if p.eat("TRUNCATE") {
        p.eat("TABLE");
        if let Some(t) = p.table() {
            push(t, "TRUNCATE");
        }
    } else if p.eat("DROP") {
        if p.eat("DATABASE") || p.eat("SCHEMA") {
            p.eat_all(&["IF", "EXISTS"]);
            if let Some(d) = p.word() {
                push((d, "*".into()), "DROP DATABASE");
            }
        } else if p.eat("TABLE") {
            // DROP TEMPORARY TABLE never reaches here: temporary tables hold no rules' rows.
            p.eat_all(&["IF", "EXISTS"]);
            while let Some(t) = p.table() {
                push(t, "DROP TABLE");
                if !p.comma() {
                    break;
                }
            }
        }
    } else if p.eat("RENAME") {
        if p.eat("TABLE") || p.eat("TABLES") {
            while let Some(from) = p.table() {
                if p.eat("WAIT") {
                    p.word();
                }
                p.eat("NOWAIT");
                if !p.eat("TO") {
                    break;
                }
                let Some(to) = p.table() else { break };
                push(from, "RENAME TABLE");
                push(to, "RENAME TABLE");
                if !p.comma() {
                    break;
                }
            }
        }
    } else if p.eat("ALTER") {
        p.eat("ONLINE");
        p.eat("IGNORE");
        if p.eat("TABLE") {
            p.eat_all(&["IF", "EXISTS"]);
            if let Some(from) = p.table() {
                // Look for a table RENAME among the alter specifications.
                while p.i < toks.len() {
                    if p.eat("RENAME") {
                        if p.kw("COLUMN") || p.kw("INDEX") || p.kw("KEY") || p.kw("CONSTRAINT") {
                            continue;
                        }
                        let _ = p.eat("TO") || p.eat("AS");
                        if p.t.get(p.i) == Some(&Tok::Other) {
                            // `RENAME = t`
                            p.i += 1;
                        }
                        if let Some(to) = p.table() {
                            push(from.clone(), "ALTER TABLE ... RENAME");
                            push(to, "ALTER TABLE ... RENAME");
                        }
                        break;
                    }
                    p.i += 1;
                }
            }
        }
    } else if p.eat_all(&["CREATE", "OR", "REPLACE"]) && p.eat("TABLE") {
        if let Some(t) = p.table() {
            push(t, "CREATE OR REPLACE TABLE");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes (the binlog carries what clients sent): an answer, never a panic.
        #[test]
        fn never_panics(sql in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = reset_tables(&sql, "d");
        }

        /// Statements built from the pieces the parser knows still never panic and a
        /// TRUNCATE of a plain name is always found.
        #[test]
        fn truncate_is_found_after_any_comment(c in "[a-z /*!#\n-]{0,20}", t in "[a-z]{1,8}") {
            let mut c = c;
            while c.contains("*/") {
                c = c.replace("*/", "");
            }
            let sql = format!("/* {c} */ TRUNCATE TABLE `{t}`");
            let r = reset_tables(sql.as_bytes(), "d");
            prop_assert_eq!(r.len(), 1);
            prop_assert_eq!(&r[0].table, &t);
        }
    }

    fn names(sql: &str, db: &str) -> Vec<String> {
        reset_tables(sql.as_bytes(), db)
            .into_iter()
            .map(|r| format!("{} {}.{}", r.verb, r.database, r.table))
            .collect()
    }

    #[test]
    fn finds_reset_tables() {
        assert_eq!(names("TRUNCATE TABLE users", "app"), ["TRUNCATE app.users"]);
        assert_eq!(
            names("truncate `app`.`us``ers`", "x"),
            ["TRUNCATE app.us`ers"]
        );
        assert_eq!(
            names(
                "/* c */ DROP TABLE IF EXISTS `a`, b.c /* generated by server */",
                "app"
            ),
            ["DROP TABLE app.a", "DROP TABLE b.c"]
        );
        assert_eq!(
            names("RENAME TABLE users TO old.users2, x TO users", "app"),
            [
                "RENAME TABLE app.users",
                "RENAME TABLE old.users2",
                "RENAME TABLE app.x",
                "RENAME TABLE app.users"
            ]
        );
        assert_eq!(
            names("ALTER TABLE app.users ADD c INT, RENAME TO users_old", "x"),
            [
                "ALTER TABLE ... RENAME app.users",
                "ALTER TABLE ... RENAME x.users_old"
            ]
        );
        assert!(names("ALTER TABLE users RENAME COLUMN a TO b", "app").is_empty());
        assert!(names(
            "ALTER TABLE users ADD COLUMN note VARCHAR(10) DEFAULT 'rename to x'",
            "app"
        )
        .is_empty());
        assert_eq!(
            names("DROP DATABASE IF EXISTS app", ""),
            ["DROP DATABASE app.*"]
        );
        assert_eq!(
            names("CREATE OR REPLACE TABLE users (id INT)", "app"),
            ["CREATE OR REPLACE TABLE app.users"]
        );
        assert_eq!(
            names("-- x\n# y\n/*!40000 TRUNCATE */ users", "app"),
            ["TRUNCATE app.users"]
        );
        assert!(names("DROP TEMPORARY TABLE users", "app").is_empty());
        assert!(names("DROP INDEX i ON users", "app").is_empty());
        assert!(names("INSERT INTO t VALUES ('TRUNCATE users')", "app").is_empty());
        assert!(names("CREATE TABLE users (id INT)", "app").is_empty());
        assert!(names("", "app").is_empty());
        assert!(names("TRUNCATE", "app").is_empty());
        assert!(names("/* unterminated", "app").is_empty());
        assert!(names("DROP TABLE `unterminated", "app").len() == 1);
    }
}
