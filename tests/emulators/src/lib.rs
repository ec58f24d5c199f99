//! Emulators of the upstream APIs the provisioning functions talk to and that have no official
//! emulator: the balenaCloud API (pinejs/OData, v7) and the AWS Lambda Runtime API. Each one
//! binds `127.0.0.1:0`, records every request it served, and can be told to fail on purpose.

pub mod balena;
pub mod iothub;
pub mod lambda_runtime;
