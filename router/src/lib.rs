//! `squeal-router`: the regional memcache router.
//!
//! A request flows through the modules in this order: listener -> protocol -> route tree ->
//! pool -> backend connection.
