//! Foreign-key cascades: `ON DELETE/UPDATE CASCADE` and `SET NULL` change child rows that
//! MariaDB and MySQL do not write to the binlog (the storage engine applies them below the
//! binlog), so a rule on the child table never sees them.
//!
//! Two ways cover them: an annotation in the statements that change the parent
//! (`/* squeal:inv orders_by_user:5 */`), or *child key templates on the parent's rule*
//! over the referenced columns: a rule on `users` with `orders_by_user:{id}` deletes the key
//! of every cascaded `orders` row built from `orders.user_id` (= `users.id`), from the
//! parent's before and after images. This module finds the foreign keys that need one and
//! tells whether the parent's rule has such a template.

use crate::config::template::{Part, Template};
use crate::config::Config;
use crate::extract::rules::Rule;
use crate::source::live;
use crate::source::schema::Cascade;

/// What to say about one cascade whose child table has a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub cascade: Cascade,
    /// Child templates a rule on the parent repeats over the referenced columns.
    pub covered: Vec<String>,
    /// Child templates nothing covers (a parent rule can only cover templates built from
    /// the foreign-key columns alone; the others need annotations).
    pub uncovered: Vec<String>,
}

/// The child template `t` rewritten over the parent's columns, if it uses only FK columns.
fn on_parent(t: &Template, c: &Cascade) -> Option<Vec<Part>> {
    t.parts
        .iter()
        .map(|p| match p {
            Part::Col(name, filters) => c
                .child_columns
                .iter()
                .position(|cc| cc.eq_ignore_ascii_case(name))
                .map(|i| Part::Col(c.parent_columns[i].to_ascii_lowercase(), filters.clone())),
            other => Some(other.clone()),
        })
        .collect()
}

fn lowered(t: &Template) -> Vec<Part> {
    t.parts
        .iter()
        .map(|p| match p {
            Part::Col(name, filters) => Part::Col(name.to_ascii_lowercase(), filters.clone()),
            other => other.clone(),
        })
        .collect()
}

/// The cascades whose child table has a rule, with which of its templates a parent rule
/// covers.
pub fn findings(cascades: &[Cascade], rules: &[Rule]) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in cascades {
        let child: Vec<&Template> = rules
            .iter()
            .filter(|r| r.matches(&c.child_db, &c.child_table))
            .flat_map(|r| r.templates.iter())
            .collect();
        if child.is_empty() {
            continue;
        }
        let parent: Vec<Vec<Part>> = rules
            .iter()
            .filter(|r| r.matches(&c.parent_db, &c.parent_table))
            .flat_map(|r| r.templates.iter().map(lowered))
            .collect();
        let mut f = Finding {
            cascade: c.clone(),
            covered: Vec::new(),
            uncovered: Vec::new(),
        };
        for t in child {
            match on_parent(t, c) {
                Some(want) if parent.contains(&want) => f.covered.push(t.source.clone()),
                _ => f.uncovered.push(t.source.clone()),
            }
        }
        out.push(f);
    }
    out
}

impl Finding {
    /// The warning for an uncovered cascade: parent, child, and the two ways to cover it.
    pub fn message(&self) -> String {
        let c = &self.cascade;
        let parent = format!("{}.{}", c.parent_db, c.parent_table);
        let child = format!("{}.{}", c.child_db, c.child_table);
        format!(
            "foreign key {name}: {child} ({ccols}) references {parent} ({pcols}) {actions}; the \
             server does not binlog the {child} rows a cascade changes, so the {child} keys \
             {uncovered:?} are NOT invalidated for them. Cover them in one of two ways: (1) an \
             annotation in every statement that changes {parent} (/* squeal:inv <the {child} \
             keys> */), or (2) for a key built only from {ccols}: the same template on a rule \
             for {parent} over {pcols} (e.g. {child} key \"x:{{{c0}}}\" -> \"x:{{{p0}}}\" on \
             {parent}); see squeal/README.md, \"FK cascades\"",
            name = c.name,
            ccols = c.child_columns.join(", "),
            pcols = c.parent_columns.join(", "),
            actions = c.actions,
            uncovered = self.uncovered,
            c0 = c.child_columns.first().map(String::as_str).unwrap_or(""),
            p0 = c.parent_columns.first().map(String::as_str).unwrap_or(""),
        )
    }
}

/// Looks for cascading foreign keys whose child table has a rule and warns (and counts,
/// `squeal_fk_cascades_uncovered{parent,child}`) about each one whose child keys no parent
/// rule covers. Run at start and after DDL. Returns the findings (for `--check`).
pub async fn warn_cascades(
    conn: &mut mysql_async::Conn,
    rules: &[Rule],
) -> anyhow::Result<Vec<Finding>> {
    let found = findings(&live::fk_cascades(conn).await?, rules);
    for f in &found {
        let c = &f.cascade;
        let parent = format!("{}.{}", c.parent_db, c.parent_table);
        let child = format!("{}.{}", c.child_db, c.child_table);
        metrics::gauge!("squeal_fk_cascades_uncovered", "parent" => parent.clone(), "child" => child.clone())
            .set(f.uncovered.len() as f64);
        if f.uncovered.is_empty() {
            tracing::info!(%parent, %child, covered = ?f.covered, "foreign-key cascade covered by the parent's rule");
        } else {
            tracing::warn!(%parent, %child, "{}", f.message());
        }
    }
    Ok(found)
}

/// The cascade check ([`warn_cascades`]) on its own connection; a failure is logged,
/// never fatal (squeal works without it, only the warning is missing).
pub async fn check_cascades(cfg: Config) {
    let rules: Vec<Rule> = cfg
        .extract
        .rules
        .iter()
        .filter_map(|r| Rule::new(r).ok())
        .collect();
    let r = async {
        let mut conn = mysql_async::Conn::new(live::opts(&cfg.source)?).await?;
        warn_cascades(&mut conn, &rules).await?;
        let _ = conn.disconnect().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = r {
        metrics::counter!("squeal_fk_check_errors_total").increment(1);
        tracing::warn!(error = %format!("{e:#}"), "could not look for foreign-key cascades");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    fn rule(db: &str, t: &str, keys: &[&str]) -> Rule {
        Rule::new(&RuleConfig {
            database: db.into(),
            table: t.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn finds_uncovered_and_covered_cascades() {
        let fk = Cascade {
            name: "fk_user".into(),
            child_db: "app".into(),
            child_table: "orders".into(),
            child_columns: vec!["user_id".into()],
            parent_db: "app".into(),
            parent_table: "users".into(),
            parent_columns: vec!["id".into()],
            actions: "ON DELETE CASCADE".into(),
        };
        let child = rule("app", "orders", &["orders_by_user:{user_id}", "order:{id}"]);
        assert!(findings(std::slice::from_ref(&fk), &[]).is_empty());
        let f = findings(std::slice::from_ref(&fk), std::slice::from_ref(&child));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].uncovered.len(), 2);
        let m = f[0].message();
        assert!(
            m.contains("app.orders") && m.contains("app.users") && m.contains("x:{id}"),
            "{m}"
        );
        // A parent template over its own key is not a child key.
        let parent = rule("app", "users", &["user:{id}"]);
        let f = findings(std::slice::from_ref(&fk), &[child.clone(), parent]);
        assert_eq!(f[0].uncovered.len(), 2);
        let parent = rule("app", "users", &["user:{email}", "orders_by_user:{ID}"]);
        let f = findings(&[fk], &[child, parent]);
        assert_eq!(f[0].covered, ["orders_by_user:{user_id}"]);
        assert_eq!(f[0].uncovered, ["order:{id}"]);
    }
}
