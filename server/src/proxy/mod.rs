//! The execution proxy: one ordered pipeline of stages, each in its own module.

pub mod egress;
