//! # provision-testkit
//!
//! What the integration tests and the local demo share: starting the emulators (moto for AWS
//! IoT, the project's balenaCloud and Lambda Runtime API emulators), running the compiled
//! function binaries as real processes with their logs captured, seeding devices, calling the
//! function as a device would, and probing the emulators' state afterwards.

pub mod aws;
pub mod aws_mqtt;
pub mod balena;
pub mod checks;
pub mod corpus;
pub mod device;
pub mod device_chain;
pub mod events;
pub mod fault_matrix;
pub mod open_balena;
pub mod paths;
pub mod process;
pub mod proxy;
pub mod scenarios;
pub mod secrets;
pub mod stack;
pub mod world;

pub use provision_emulators::balena::{BalenaEmulator, Fault};
