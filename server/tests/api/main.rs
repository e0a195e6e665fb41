//! API integration tests: real servers on loopback ports, real HTTP, real databases.

mod agents;
mod auth;
mod browser;
mod errors;
mod support;
