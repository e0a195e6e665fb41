//! API integration tests: real servers on loopback ports, real HTTP, real databases.

mod agents;
mod audit;
mod auth;
mod browser;
mod budget;
mod errors;
mod mock;
mod proxy;
mod support;
