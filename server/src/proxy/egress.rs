//! Egress guard (SSRF): which targets AEGIS may connect to.
