//! The device side of balena provisioning: a drop-in replacement for balena's Node
//! *cloud-relay* block. It proves itself to the provisioning function with the device's own
//! balenaCloud key, and relays every message from the local MQTT broker to the cloud through a
//! durable on-disk queue.

pub mod backoff;
pub mod help;
pub mod iotedge;
pub mod jwt;
pub mod kept_key;
pub mod link;
pub mod local;
pub mod provisioning;
pub mod queue;
pub mod relay;
pub mod settings;
pub mod tls;
pub mod uplink;
