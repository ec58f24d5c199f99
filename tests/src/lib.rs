//! # provision-testkit
//!
//! What the end-to-end tests, the demo and the benchmarks share. A test world per cloud
//! ([`world`]) starts the registry's emulator (moto for AWS IoT, the IoT Hub and ClearBlade
//! emulators of `provision-emulators`), a balenaCloud ([`balena`]: the project's emulator, or
//! the real open-balena API server, [`open_balena`]) and the function's binaries as real
//! processes with their logs captured; [`stack::Stack`] is what every world offers, and
//! [`scenarios`] the scenarios written once against it, for every cloud. Beside them: calling
//! the function as a device would ([`events`]), probing the registries' state ([`checks`]), the
//! fault matrix ([`fault_matrix`]), the hostile-input corpus ([`corpus`]), the secret audit
//! every world runs as it stops ([`secrets`]), and the whole chain a device meets, `cloud-relay`
//! and the clouds' MQTT stand-ins included ([`device_chain`]).

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
