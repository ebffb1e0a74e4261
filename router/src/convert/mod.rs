//! Configs of the programs the router replaces, turned into the router's own TOML so a
//! fleet can switch without rewriting them by hand. Each converter either maps a setting
//! or refuses it with a message naming it; the TOML it writes is then validated exactly as
//! a hand-written file (`Config::parse`), so a converted config is never trusted more.

pub mod mcrouter;
pub mod nutcracker;
