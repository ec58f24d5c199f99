//! Making the registry (the SDK's configuration) and describing what AWS holds for a thing:
//! its principals and the certificates behind them, classified as the function's or not.

use super::*;

impl AwsIotRegistry {
    pub fn new(client: Client, policy: String) -> Self {
        AwsIotRegistry {
            client,
            policy,
            cert_arn_prefix: std::sync::OnceLock::new(),
        }
    }

    /// Keeps the account's certificate ARN prefix from `arn` (the first one seen).
    pub(super) fn learn_arn(&self, arn: &str) {
        if self.cert_arn_prefix.get().is_none()
            && let Some((prefix, _)) = arn.split_once(":cert/")
        {
            let _ = self.cert_arn_prefix.set(format!("{prefix}:cert/"));
        }
    }

    /// One certificate attached to the thing: its state, whether our policy is attached, and
    /// whether it is the function's to revoke (issued for this device, attached to no other
    /// thing). `None`: it is gone.
    pub(super) async fn describe(
        &self,
        deadline: Deadline,
        thing: &str,
        id: &str,
        arn: &str,
    ) -> Result<Option<RegisteredCredential>, RegistryError> {
        let (described, policies, things) = tokio::join!(
            call(
                deadline,
                self.client.describe_certificate().certificate_id(id).send()
            ),
            call(
                deadline,
                self.client.list_attached_policies().target(arn).send()
            ),
            call(
                deadline,
                self.client.list_principal_things().principal(arn).send()
            ),
        );
        let attached_elsewhere = match things {
            Ok(out) => out.things().iter().any(|t| t != thing),
            Err(f) if f.is(NOT_FOUND) => false,
            Err(f) => return Err(f.into()),
        };
        let description = match described {
            Ok(out) => out.certificate_description,
            Err(f) if f.is(NOT_FOUND) => None,
            Err(f) => return Err(f.into()),
        };
        let policy_attached = match policies {
            Ok(out) => out
                .policies()
                .iter()
                .any(|p| p.policy_name() == Some(self.policy.as_str())),
            Err(f) if f.is(NOT_FOUND) => false,
            Err(f) => return Err(f.into()),
        };
        let Some(description) = description else {
            return Ok(None);
        };
        let pem = description.certificate_pem().map(str::to_owned);
        let active = description.status() == Some(&CertificateStatus::Active);
        let facts = pem.as_deref().and_then(|p| certificate_facts(p).ok());
        // The function's certificates come from CSRs whose subject is the device UUID (its
        // own, or the device's, which must say so), signed by AWS, not by a CA of the account.
        let issued_here = facts
            .as_ref()
            .is_some_and(|f| f.common_name.as_deref() == Some(thing))
            && description.ca_certificate_id().is_none();
        let foreign = if attached_elsewhere {
            Some(Foreign::AttachedElsewhere)
        } else if !issued_here {
            Some(Foreign::MadeElsewhere)
        } else {
            None
        };
        Ok(Some(RegisteredCredential {
            id: id.to_owned(),
            public_key: facts.map(|f| f.public_key),
            handle: Handle::new(Certificate {
                arn: arn.to_owned(),
                pem,
            }),
            active,
            complete: active && policy_attached,
            foreign,
        }))
    }

    /// The thing's principals (`None`: no thing), and the certificate `known` (id, ARN)
    /// described beside listing them.
    pub(super) async fn inspect_with(
        &self,
        deadline: Deadline,
        thing: &str,
        known: Option<(String, String)>,
    ) -> Result<RegistryState, RegistryError> {
        let list = call(
            deadline,
            self.client.list_thing_principals().thing_name(thing).send(),
        );
        let early = async {
            match &known {
                Some((id, arn)) => Some(self.describe(deadline, thing, id, arn).await),
                None => None,
            }
        };
        let (listed, early) = tokio::join!(list, early);
        let principals = match listed {
            Ok(out) => out.principals().to_vec(),
            Err(f) if f.is(NOT_FOUND) => return Ok(RegistryState::default()),
            Err(f) => return Err(f.into()),
        };
        if let Some(arn) = principals.first() {
            self.learn_arn(arn);
        }
        let early = match early {
            Some(result) => Some(result?),
            None => None,
        };
        let lookups = principals
            .iter()
            .filter_map(|arn| cert_id(arn).map(|id| (arn, id)))
            .map(|(arn, id)| {
                let described = match (&known, &early) {
                    (Some((_, known_arn)), Some(found)) if known_arn == arn => Some(found.clone()),
                    _ => None,
                };
                async move {
                    match described {
                        Some(found) => Ok(found),
                        None => self.describe(deadline, thing, id, arn).await,
                    }
                }
            });
        let credentials = futures::future::try_join_all(lookups)
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok(RegistryState {
            entry: true,
            credentials,
            revision: None,
        })
    }

    /// The SDK configuration from the standard AWS environment (region, credentials,
    /// `AWS_ENDPOINT_URL[_IOT]`), with the SDK's own retries and timeouts set for a function
    /// that must answer within its budget.
    pub async fn sdk_config(attempt_timeout: Duration) -> aws_config::SdkConfig {
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(4)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(2)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(attempt_timeout)
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .load()
            .await
    }
}
