//! Fencing: who holds which key, and (in later layers) the engine that makes
//! a LUN's reservation match the attachments.

pub mod clock;
pub mod decide;
pub mod engine;
pub mod keys;
pub mod policy;
pub mod state;
