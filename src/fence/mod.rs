//! Fencing: who holds which key, and (in later layers) the engine that makes
//! a LUN's reservation match the attachments.

pub mod keys;
