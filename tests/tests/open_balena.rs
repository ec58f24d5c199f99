//! The shared scenarios of every cloud against the REAL balenaCloud API server
//! (open-balena-api, the open-source server behind balenaCloud, from `../shared/open-balena`)
//! instead of the project's emulator: each world gets a new fleet from its `fixture.py`,
//! registers its devices as devices do, and reads balenaCloud's state through the real API.
//!
//! Needs a running server: `OPEN_BALENA_URL` (set by `scripts/test`, or
//! `eval "$(scripts/open-balena start)"`). Without it every test here fails, saying so.
//! The scenarios that inject balenaCloud failures run on the emulator only (see
//! `scenarios_needing_the_balena_emulator!`).

use provision_testkit::shared_scenarios_on_open_balena;
use provision_testkit::world::{AwsWorld, AzureWorld, GcpWorld};

shared_scenarios_on_open_balena!(aws, AwsWorld);
shared_scenarios_on_open_balena!(azure, AzureWorld);
shared_scenarios_on_open_balena!(gcp, GcpWorld);
