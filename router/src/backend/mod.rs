//! Backend connections: long-lived, pipelined connections from one worker to one memcached
//! server, process by all the worker's clients.

pub mod codec;
pub mod connection;
pub mod health;

pub use connection::BackendConn;
