//! Emulators of the upstream APIs the provisioning functions talk to and that have no official
//! emulator: the balenaCloud API (pinejs/OData, v7), the Azure IoT Hub identity registry and the
//! AWS Lambda Runtime API. Each one binds `127.0.0.1:0` and records every request it served;
//! the balenaCloud and IoT Hub ones can be told to fail on purpose and to answer slowly.
//! [`mqtt`] holds stand-ins for the clouds' MQTT brokers that authenticate devices as the
//! clouds do.

pub mod balena;
pub mod clearblade;
pub mod cli;
mod common;
pub mod fault_proxy;
pub mod iothub;
pub mod lambda_runtime;
pub mod mqtt;
pub mod tls_front;
