//! Deterministic SAN simulation: test support shared by the engine,
//! reconciler and Kubernetes tests. A strict model of one LUN's persistent
//! reservations ([`lun`]), a SAN that hands each node's commands to a seeded
//! scheduler with faults ([`san`]), and a cluster of real engines on it
//! whose safety properties are checked after every command ([`world`]);
//! Windows nodes reach it through a double of the class driver and MPIO
//! ([`windows`]).
pub mod lun;
pub mod san;
pub mod schedule;
pub mod windows;
pub mod world;
