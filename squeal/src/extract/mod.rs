//! Extract: which keys a committed transaction invalidates. The [`process::Processor`]
//! takes the source's decoded events, assembles transactions (commit, rollback, XA) and
//! hands on each committed one with its keys (`model::Committed`); [`file`] feeds it a
//! binlog file. Keys come three ways, combinable: row rules ([`rules`], bound to a table's
//! columns by its [`plan`], column values rendered as key text by [`text`]), SQL
//! annotations ([`annotation`], format in `marker::annotation`) and outbox tables
//! ([`outbox`]). [`ddl`] notices statements that reset a rule table; [`cascade`] finds
//! foreign-key cascades no rule covers.

pub mod annotation;
pub mod cascade;
pub mod ddl;
pub mod file;
pub mod outbox;
pub mod plan;
pub mod process;
pub mod rules;
pub mod text;
