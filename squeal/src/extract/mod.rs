//! Extract: which keys a committed transaction invalidates. Three ways, combinable:
//! row rules ([`rules`]), SQL annotations ([`annotation`], format in `marker::annotation`),
//! and outbox tables ([`outbox`]). [`transaction`] gathers a transaction's keys until its
//! commit (the source's processor decides commit and rollback).

pub mod annotation;
pub mod cascade;
pub mod ddl;
pub mod outbox;
pub mod rules;
