//! API integration tests: real servers on loopback ports, real HTTP, real databases.

mod agents;
mod approvals;
mod audit;
mod auth;
mod bench;
mod breaker;
mod browser;
mod budget;
mod dashboard;
mod demo;
mod docs;
mod errors;
mod events;
mod faults;
mod fuzz;
mod group_commit;
mod inline_reads;
mod lifecycle;
mod mock;
mod observability;
mod policies;
mod proxy;
mod replicas;
mod support;
mod topology;
mod trust;
