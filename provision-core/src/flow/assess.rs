//! What a snapshot is worth: whether the stored variables name a usable credential, which
//! credentials are stale, and the report a GET answers.

use serde_json::{Value, json};

use crate::balena::VarTarget;
use crate::codec::base64_decode;
use crate::credentials::{DeviceCsr, public_key_of_private_pem};
use crate::registry::{Foreign, RegisteredCredential};
use crate::secret::Secret;

use super::snapshot::Snapshot;
use super::{Job, Outcome, Provisioner, Status};

/// Which private-key arrangement a request expects.
#[derive(Clone, Copy)]
pub(super) enum KeyMode<'a> {
    /// The function makes the key and stores it.
    Generated,
    /// The device keeps its key; the stored certificate must be for this CSR's key.
    Csr(&'a DeviceCsr),
    /// Either (GET reports on what is there, DELETE removes it).
    Either,
}

/// How the stored variables and the registry relate.
pub(super) struct Assessment {
    /// The stored variables name an active, complete credential, consistently.
    pub(super) usable: Option<RegisteredCredential>,
    /// The active credential the stored variables name, usable or not: it stays registered
    /// until new variables replace it, so the variables never name a credential that is gone.
    pub(super) named: Option<RegisteredCredential>,
    /// Credentials of ours other than the usable one.
    pub(super) extras: Vec<RegisteredCredential>,
}

impl Assessment {
    pub(super) fn healthy(&self) -> bool {
        self.usable.is_some() && self.extras.is_empty()
    }
}

impl Provisioner {
    pub(super) fn assess(
        &self,
        job: &Job<'_>,
        snapshot: &Snapshot,
        mode: KeyMode<'_>,
    ) -> Assessment {
        let vars = snapshot.vars();
        let stored_key = self.registry.stored_public_key(&vars);
        let private = vars
            .get(self.registry.private_key_variable())
            .map(|v| {
                base64_decode(v.expose())
                    .and_then(|pem| String::from_utf8(pem).ok())
                    .map(Secret::new)
            })
            .map(|pem| pem.and_then(|pem| public_key_of_private_pem(&pem).ok()));
        // Where only the private key says which credential is the device's (ClearBlade), a
        // device that keeps its own key has none stored: the registered key stands for it.
        let implicit = !self.registry.variables_name_credential() && private.is_none();
        let key_consistent = match (mode, &private) {
            (KeyMode::Csr(csr), None) => implicit || stored_key.as_ref() == Some(csr.public_key()),
            (KeyMode::Generated | KeyMode::Either, Some(Some(public))) => {
                stored_key.as_ref() == Some(public)
            }
            (KeyMode::Either, None) => implicit || stored_key.is_some(),
            _ => false,
        };
        // A CSR's key must be the registered one (a registry that knows its keys says so).
        let csr_key_registered = |c: &RegisteredCredential| match mode {
            KeyMode::Csr(csr) => c.public_key.as_ref().is_none_or(|k| k == csr.public_key()),
            _ => true,
        };
        let fixed_ok = self
            .registry
            .fixed_variables(job.uuid())
            .iter()
            .all(|(name, value)| vars.get(*name).map(Secret::expose) == Some(value.as_str()));
        let matched = snapshot
            .state
            .credentials
            .iter()
            .filter(|_| key_consistent && fixed_ok && snapshot.state.entry)
            .find(|c| {
                c.active
                    && c.complete
                    && self.registry.is_named_by(&vars, c)
                    && csr_key_registered(c)
            })
            .cloned();
        // Credentials that are not the function's (see `Foreign`) are neither the device's
        // nor stale: they stay as they are.
        let extras = snapshot
            .state
            .credentials
            .iter()
            .filter(|c| c.is_ours())
            .filter(|c| matched.as_ref().is_none_or(|m| m.id != c.id))
            .cloned()
            .collect();
        let named = matched.clone().or_else(|| {
            snapshot
                .state
                .credentials
                .iter()
                .find(|c| c.active && self.registry.is_named_by(&vars, c))
                .cloned()
        });
        Assessment {
            usable: matched,
            named,
            extras,
        }
    }

    /// GET: what the registry and balenaCloud hold for the device, and what that comes to.
    pub(super) fn report(&self, job: &Job<'_>, snapshot: &Snapshot) -> Outcome {
        let assessment = self.assess(job, snapshot, KeyMode::Either);
        let status = if assessment.healthy() {
            Status::Provisioned
        } else if snapshot.is_empty() {
            Status::NotProvisioned
        } else {
            Status::Partial
        };
        let stored_id = assessment.usable.as_ref().map(|c| c.id.clone());
        let credentials: Vec<Value> = snapshot
            .state
            .credentials
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "active": c.active,
                    "complete": c.complete,
                    "stored": Some(&c.id) == stored_id.as_ref(),
                    "foreign": c.foreign.map(|f| match f {
                        Foreign::AttachedElsewhere => "attached-elsewhere",
                        Foreign::MadeElsewhere => "made-elsewhere",
                    }),
                    "public_key": c.public_key.as_ref().map(|k| k.fingerprint()),
                })
            })
            .collect();
        let variables: serde_json::Map<String, Value> = self
            .registry
            .variable_names()
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    Value::Bool(snapshot.record.vars.contains_key(*name)),
                )
            })
            .collect();
        Outcome {
            details: Some(json!({
                "registry": {"entry": snapshot.state.entry, "credentials": credentials},
                "variables": variables,
                "target": match snapshot.target { VarTarget::Device { .. } => "device", VarTarget::Service { .. } => "service" },
                "busy": !self.lock_free(snapshot, false),
            })),
            ..Outcome::plain(status, job)
        }
    }
}
