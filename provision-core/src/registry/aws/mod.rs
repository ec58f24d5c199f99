//! AWS IoT Core through `aws-sdk-iot`: a thing per device (named by its UUID), an X.509
//! certificate per credential, issued by AWS from a CSR made in-process (so the private key
//! never travels), with the fleet's IoT policy attached.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_iot::Client;
use aws_sdk_iot::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iot::types::{AttributePayload, CertificateStatus};

use super::{
    Cloud, Device, Foreign, Handle, Material, RegisteredCredential, Registration, Registry,
    RegistryError, RegistryState,
};
use crate::codec::base64_decode;
use crate::credentials::{PublicKeyId, certificate_facts};
use crate::error::UpstreamFailure;
use crate::ids::{DeviceUuid, RegistryDeviceId};
use crate::retry::Deadline;
use crate::secret::Secret;

mod calls;
mod certificates;
mod client;
mod settings;

use calls::*;

pub const CERT_VAR: &str = "AWS_CERT";
pub const KEY_VAR: &str = "AWS_PRIVATE_KEY";
/// The attribute every thing this function makes carries.
pub const MADE_BY: (&str, &str) = ("provisioned-by", "balena-provision");

/// What the registry keeps of a certificate: its ARN, which every call on it needs, and its
/// PEM where AWS described it.
#[derive(Clone, Debug)]
pub(super) struct Certificate {
    arn: String,
    pem: Option<String>,
}

/// The certificate behind a credential this registry made.
fn certificate(credential: &RegisteredCredential) -> Result<&Certificate, RegistryError> {
    credential
        .handle
        .get::<Certificate>()
        .ok_or_else(|| RegistryError::Local("a credential that is not an AWS certificate".into()))
}

pub struct AwsIotRegistry {
    client: Client,
    policy: String,
    /// `arn:aws:iot:<region>:<account>:cert/`, learned from the first certificate ARN AWS
    /// answers with: with it, the certificate the variables name is described beside listing
    /// the thing's principals instead of after.
    cert_arn_prefix: std::sync::OnceLock<String>,
}

#[async_trait]
impl Registry for AwsIotRegistry {
    fn cloud(&self) -> Cloud {
        Cloud::Aws
    }

    fn device_id(&self, uuid: &DeviceUuid) -> RegistryDeviceId {
        RegistryDeviceId::new(uuid.as_str().to_owned())
    }

    fn variable_names(&self) -> &'static [&'static str] {
        &[CERT_VAR, KEY_VAR]
    }

    /// Activating a certificate: its status, the policy and the thing, at once.
    fn calls_at_once(&self) -> usize {
        3
    }

    fn private_key_variable(&self) -> &'static str {
        KEY_VAR
    }

    fn stored_public_key(&self, vars: &BTreeMap<String, Secret>) -> Option<PublicKeyId> {
        super::stored_certificate(vars, CERT_VAR).map(|f| f.public_key)
    }

    /// The stored certificate is the registered one (AWS issues a new certificate even for a
    /// key it has seen, so the key alone does not say which).
    fn is_named_by(
        &self,
        vars: &BTreeMap<String, Secret>,
        credential: &RegisteredCredential,
    ) -> bool {
        let stored = vars
            .get(CERT_VAR)
            .and_then(|v| base64_decode(v.expose()))
            .and_then(|pem| String::from_utf8(pem).ok());
        let registered = certificate(credential).ok().and_then(|c| c.pem.as_deref());
        match (stored, registered) {
            (Some(stored), Some(registered)) => same_pem(&stored, registered),
            _ => false,
        }
    }

    fn variables(
        &self,
        _uuid: &DeviceUuid,
        credential: &RegisteredCredential,
        private_key: Option<&Secret>,
    ) -> Vec<(&'static str, Secret)> {
        let pem = certificate(credential)
            .ok()
            .and_then(|c| c.pem.as_deref())
            .unwrap_or("");
        super::certificate_variables((CERT_VAR, KEY_VAR), pem, private_key)
    }

    /// DescribeEndpoint (the account's device data endpoint): allowed to the function's role,
    /// and it needs the region and credentials to be right.
    async fn probe(&self, deadline: Deadline) -> Result<String, RegistryError> {
        let sent = tokio::time::timeout(
            deadline.remaining(),
            self.client
                .describe_endpoint()
                .endpoint_type("iot:Data-ATS")
                .send(),
        )
        .await;
        let answer = match sent {
            Err(_) => {
                return Err(RegistryError::Upstream(UpstreamFailure::Unavailable {
                    detail: "the request's time budget was used up".into(),
                }));
            }
            Ok(Ok(answer)) => answer,
            // Beside AWS's own refusals, say why the call could not be made at all (no
            // credentials, no connection): that is what the operator fixes next.
            Ok(Err(err)) => {
                return Err(RegistryError::Upstream(
                    match (classify(&err).failure, &err) {
                        (UpstreamFailure::Unavailable { detail }, e)
                            if !matches!(e, SdkError::ServiceError(_)) =>
                        {
                            let cause: String = aws_sdk_iot::error::DisplayErrorContext(e)
                                .to_string()
                                .chars()
                                .filter(|c| !c.is_control())
                                .take(300)
                                .collect();
                            UpstreamFailure::Unavailable {
                                detail: format!("{detail} ({cause})"),
                            }
                        }
                        (failure, _) => failure,
                    },
                ));
            }
        };
        let region = self
            .client
            .config()
            .region()
            .map_or_else(|| "no region".to_owned(), |r| r.to_string());
        Ok(format!(
            "DescribeEndpoint in {region}: devices connect to {}",
            answer
                .endpoint_address()
                .unwrap_or("(no address in the answer)")
        ))
    }

    async fn inspect(
        &self,
        deadline: Deadline,
        thing: &RegistryDeviceId,
    ) -> Result<RegistryState, RegistryError> {
        let thing = thing.as_str();
        self.inspect_with(deadline, thing, None).await
    }

    /// The certificate the variables hold is described beside listing the thing's principals
    /// (its id is the SHA-256 of its DER, its ARN the account's prefix and the id), so a
    /// provisioned device is read in one round trip; only certificates it does not name need
    /// a second.
    async fn inspect_named(
        &self,
        deadline: Deadline,
        thing: &RegistryDeviceId,
        vars: &BTreeMap<String, Secret>,
    ) -> Result<RegistryState, RegistryError> {
        let thing = thing.as_str();
        let known = super::stored_certificate(vars, CERT_VAR).and_then(|facts| {
            let id = facts.sha256_thumbprint.to_ascii_lowercase();
            let arn = format!("{}{id}", self.cert_arn_prefix.get()?);
            Some((id, arn))
        });
        self.inspect_with(deadline, thing, known).await
    }

    async fn register(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        state: &RegistryState,
        material: Material<'_>,
    ) -> Result<Registration, RegistryError> {
        let device_id = device.id;
        let thing = device_id.as_str();
        let csr = match material {
            Material::Generated(key) => key.csr_pem(device.uuid).map_err(RegistryError::Local)?,
            Material::Csr(csr) => csr.pem().to_owned(),
        };
        // The thing and the certificate do not depend on each other: make them together. The
        // certificate starts inactive, so a crash before it is attached leaves nothing usable.
        let create_thing = async {
            if state.entry {
                Ok(false)
            } else {
                // With this function's mark: AWS accepts the same call again (a retry, or a
                // racing request) but refuses a thing someone else made, so a registration
                // that skipped reading the registry never takes over a thing it did not know.
                let mark = AttributePayload::builder()
                    .attributes(MADE_BY.0, MADE_BY.1)
                    .build();
                call(
                    deadline,
                    self.client
                        .create_thing()
                        .thing_name(thing)
                        .attribute_payload(mark)
                        .send(),
                )
                .await
                .map(|_| true)
            }
        };
        let create_cert = call(
            deadline,
            self.client
                .create_certificate_from_csr()
                .certificate_signing_request(csr)
                .set_as_active(false)
                .send(),
        );
        let (made_thing, made_cert) = tokio::join!(create_thing, create_cert);
        let created_entry = matches!(made_thing, Ok(true));
        if let Some(arn) = made_cert.as_ref().ok().and_then(|c| c.certificate_arn()) {
            self.learn_arn(arn);
        }
        let issued = made_cert.as_ref().ok().and_then(|cert| {
            Some(RegisteredCredential {
                id: cert.certificate_id()?.to_owned(),
                public_key: Some(material.public_key()),
                handle: Handle::new(Certificate {
                    arn: cert.certificate_arn()?.to_owned(),
                    pem: Some(cert.certificate_pem()?.to_owned()),
                }),
                active: false,
                complete: false,
                foreign: None,
            })
        });
        match (made_thing, made_cert, issued) {
            (Ok(_), Ok(_), Some(credential)) => Ok(Registration {
                credential,
                created_entry,
            }),
            (thing_result, cert_result, issued) => {
                if let Some(stray) = &issued {
                    tracing::warn!(certificate = %stray.id, "deleting the certificate this request made: the thing could not be made");
                    let _ = self.revoke_certificate(deadline, thing, stray).await;
                }
                if created_entry {
                    tracing::warn!(thing = %thing, "deleting the thing this request made: the certificate could not be made");
                    let _ = self.remove_entry(deadline, device_id).await;
                }
                Err(match (thing_result, cert_result) {
                    (Err(f), _) | (_, Err(f)) => f.into(),
                    _ => RegistryError::Upstream(UpstreamFailure::Unavailable {
                        detail: "CreateCertificateFromCsr answered without ARN, id or PEM".into(),
                    }),
                })
            }
        }
    }

    async fn activate(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        _state: &RegistryState,
        _keep: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
    ) -> Result<(), RegistryError> {
        let thing = device.id;
        let thing = thing.as_str();
        let arn = certificate(credential)?.arn.as_str();
        let (active, policy, principal) = tokio::join!(
            call(
                deadline,
                self.client
                    .update_certificate()
                    .certificate_id(&credential.id)
                    .new_status(CertificateStatus::Active)
                    .send()
            ),
            call(
                deadline,
                self.client
                    .attach_policy()
                    .policy_name(&self.policy)
                    .target(arn)
                    .send()
            ),
            call(
                deadline,
                self.client
                    .attach_thing_principal()
                    .thing_name(thing)
                    .principal(arn)
                    .send()
            ),
        );
        active?;
        policy?;
        principal?;
        Ok(())
    }

    async fn revoke(
        &self,
        deadline: Deadline,
        thing: &RegistryDeviceId,
        credentials: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        let thing = thing.as_str();
        let revocations = credentials
            .iter()
            .map(|c| self.revoke_certificate(deadline, thing, c));
        futures::future::try_join_all(revocations).await.map(|_| ())
    }

    async fn remove_entry(
        &self,
        deadline: Deadline,
        thing: &RegistryDeviceId,
    ) -> Result<(), RegistryError> {
        match self.delete_thing(deadline, thing.as_str()).await? {
            true => Ok(()),
            false => Err(RegistryError::Changed(format!(
                "thing {} gained a principal since it was read",
                thing.as_str()
            ))),
        }
    }

    /// Deactivates and detaches every certificate at once (one that is not the function's is
    /// only detached). A certificate whose deactivation failed is attached again, so it is left
    /// exactly as it was (still found, still named).
    async fn retire(
        &self,
        deadline: Deadline,
        thing: &RegistryDeviceId,
        state: &RegistryState,
    ) -> Result<(), RegistryError> {
        let thing = thing.as_str();
        let steps = state.credentials.iter().filter_map(|c| {
            let arn = certificate(c).ok()?.arn.as_str();
            Some(self.unusable(deadline, thing, c, arn))
        });
        let results = futures::future::join_all(steps).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    /// Attaches every certificate again and activates the one the variables name.
    async fn unretire(
        &self,
        deadline: Deadline,
        thing: &RegistryDeviceId,
        state: &RegistryState,
        vars: &BTreeMap<String, Secret>,
    ) -> Result<(), RegistryError> {
        let thing = thing.as_str();
        // AWS IoT's certificate id is the SHA-256 of the certificate's DER.
        let named = super::stored_certificate(vars, CERT_VAR)
            .map(|f| f.sha256_thumbprint.to_ascii_lowercase());
        let steps = state
            .credentials
            .iter()
            .filter_map(|c| Some((c.id.as_str(), certificate(c).ok()?.arn.as_str())))
            .map(|(id, arn)| {
                let named = named.as_deref() == Some(id);
                async move {
                    let activate = async {
                        if named {
                            ok_if_gone(
                                call(
                                    deadline,
                                    self.client
                                        .update_certificate()
                                        .certificate_id(id)
                                        .new_status(CertificateStatus::Active)
                                        .send(),
                                )
                                .await,
                            )
                        } else {
                            Ok(())
                        }
                    };
                    let attach = async {
                        ok_if_gone(
                            call(
                                deadline,
                                self.client
                                    .attach_thing_principal()
                                    .thing_name(thing)
                                    .principal(arn)
                                    .send(),
                            )
                            .await,
                        )
                    };
                    let (activated, attached) = tokio::join!(activate, attach);
                    activated.and(attached)
                }
            });
        let results = futures::future::join_all(steps).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }

    /// Deletes the (inactive, detached) certificates and the thing at once.
    async fn purge(
        &self,
        deadline: Deadline,
        thing: &RegistryDeviceId,
        state: &RegistryState,
    ) -> Result<bool, RegistryError> {
        let thing = thing.as_str();
        let certificates = state
            .credentials
            .iter()
            .filter(|c| c.is_ours())
            .map(|c| self.delete_certificate(deadline, &c.id));
        let remove_thing = async {
            match state.entry {
                true => self.delete_thing(deadline, thing).await,
                false => Ok(true),
            }
        };
        let (deleted, removed) =
            tokio::join!(futures::future::join_all(certificates), remove_thing);
        deleted.into_iter().collect::<Result<Vec<()>, _>>()?;
        removed
    }
}

impl AwsIotRegistry {
    /// Deletes the thing: `true` once it is gone, `false` if it still has a principal after a
    /// few short retries. Right after a detach that is AWS's asynchronous propagation; after
    /// the retries, a certificate attached since the thing was read (a request finishing
    /// meanwhile), which the caller must remove too.
    async fn delete_thing(&self, deadline: Deadline, thing: &str) -> Result<bool, RegistryError> {
        let mut wait = Duration::from_millis(100);
        loop {
            match call(
                deadline,
                self.client.delete_thing().thing_name(thing).send(),
            )
            .await
            {
                Ok(_) => return Ok(true),
                Err(f) if f.is(NOT_FOUND) => return Ok(true),
                Err(f) if f.is("InvalidRequestException") && still_attached(&f) => {
                    if wait > Duration::from_millis(400) || wait >= deadline.remaining() {
                        return Ok(false);
                    }
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(f) => return Err(f.into()),
            }
        }
    }
}
