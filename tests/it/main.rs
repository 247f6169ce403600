//! Integration tests against a real server on port 0, over real WebSockets.
//! One test binary (modules below) keeps link time down.

mod abuse;
mod cluster;
mod common;
mod copy;
mod core;
mod demo;
mod docs;
mod history;
mod history_attack;
mod hocuspocus;
mod http;
mod interop;
mod pg;
mod presence;
mod rest_abuse;
mod security;
mod store;
mod supervise;
mod tap;
mod transport;
mod vectors;
mod yjs;
