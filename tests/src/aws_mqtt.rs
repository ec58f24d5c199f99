//! AWS IoT Core's MQTT authentication and authorisation, for the MQTT stand-in
//! ([`provision_emulators::mqtt::MqttStandIn`]), asking moto through the real AWS SDK.
//!
//! What AWS IoT Core does with an MQTT connection on port 8883 (developer guide, "Client
//! authentication", "AWS IoT Core policies", "Thing policy variables"), and the stand-in with it:
//! * The client presents an X.509 certificate that AWS IoT issued (or one registered with a
//!   registered CA). The stand-in requires the leaf to be signed by moto's issuing CA
//!   ([`crate::aws::Moto::iot_ca_pem`]) and within its validity period. AWS IoT fails the TLS
//!   handshake without one; the stand-in's TLS layer accepts any and refuses the CONNECT
//!   (CONNACK 5) instead.
//! * The certificate must be known to the account and `ACTIVE`: its id is the SHA-256 of its
//!   DER in hex, as AWS IoT makes it (and moto, as tests/moto/moto_server.py configures it);
//!   DescribeCertificate says whether it exists and its status.
//! * The policy variables: `iot:ClientId` is the CONNECT's client id;
//!   `iot:Connection.Thing.IsAttached` is whether the certificate is attached to the thing
//!   the client id names (ListThingPrincipals), and `iot:Connection.Thing.ThingName` is that
//!   thing's name when it is.
//! * The policies attached to the certificate (ListAttachedPolicies, GetPolicy) must allow
//!   `iot:Connect` on `arn:aws:iot:{region}:{account}:client/{client id}`, else CONNACK 5; the
//!   region and account are the certificate ARN's. Evaluation follows
//!   [`provision_emulators::mqtt::policy`] (explicit Deny wins).
//! * Each PUBLISH needs `iot:Publish` on `...:topic/{topic}`; otherwise AWS IoT disconnects the
//!   client, and so does the stand-in. A SUBSCRIBE filter needs `iot:Subscribe` on
//!   `...:topicfilter/{filter}`; the stand-in answers a filter the policies do not allow with
//!   the SUBACK failure code 0x80 (its reading of AWS IoT's answer). QoS 0 and 1 (the server
//!   closes the connection on QoS 2).
//! * Registry or network failures while deciding answer CONNACK 3 (server unavailable).
//!
//! The policies and attachments are read once at CONNECT; AWS IoT also caches them per
//! connection for a while.

use aws_sdk_iot::Client;
use aws_sdk_iot::types::CertificateStatus;
use provision_emulators::mqtt::policy::{self, Context, Decision, PolicyDocument};
use provision_emulators::mqtt::{
    Authenticator, ConnectRequest, PublishTarget, Refusal, Session, SubscribeAnswer, async_trait,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::aws::Moto;

/// What a connection may do: the attached policies and the connection's policy variables.
struct Grants {
    documents: Vec<PolicyDocument>,
    context: Context,
    /// `arn:{partition}:iot:{region}:{account}`.
    arn_prefix: String,
}

impl Grants {
    fn decide(&self, action: &str, resource: &str) -> Decision {
        policy::evaluate(
            &self.documents,
            action,
            &format!("{}:{resource}", self.arn_prefix),
            &self.context,
        )
    }
}

/// Authenticates devices against moto's AWS IoT registry (see the module documentation).
#[derive(Clone)]
pub struct AwsAuthenticator {
    iot: Client,
    /// The issuing CA certificate, DER.
    ca_der: Vec<u8>,
}

impl std::fmt::Debug for AwsAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsAuthenticator").finish_non_exhaustive()
    }
}

/// Lowercase hex of the SHA-256 of `der`: AWS IoT's certificate id.
pub fn certificate_id(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_not_found<E: aws_sdk_iot::error::ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("ResourceNotFoundException")
}

impl AwsAuthenticator {
    /// An authenticator asking `iot` (a client for moto) and trusting `ca_pem`, the CA that
    /// issues the account's certificates.
    pub fn new(iot: Client, ca_pem: &str) -> anyhow::Result<AwsAuthenticator> {
        let (_, block) = x509_parser::pem::parse_x509_pem(ca_pem.trim().as_bytes())
            .map_err(|e| anyhow::anyhow!("the AWS IoT CA is not PEM: {e}"))?;
        X509Certificate::from_der(&block.contents)
            .map_err(|e| anyhow::anyhow!("the AWS IoT CA is not a certificate: {e}"))?;
        Ok(AwsAuthenticator {
            iot,
            ca_der: block.contents,
        })
    }

    /// For this moto: its SDK client and its issuing CA.
    pub async fn for_moto(moto: &Moto) -> anyhow::Result<AwsAuthenticator> {
        AwsAuthenticator::new(moto.client().await, &moto.iot_ca_pem())
    }

    /// The leaf is signed by the CA and valid now.
    fn check_chain(&self, leaf: &[u8]) -> Result<(), String> {
        let (_, ca) = X509Certificate::from_der(&self.ca_der)
            .map_err(|_| "the CA does not parse".to_string())?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|_| "the client certificate does not parse".to_string())?;
        if cert.issuer() != ca.subject() {
            return Err(format!(
                "the client certificate is issued by {}, not by the account's CA {}",
                cert.issuer(),
                ca.subject()
            ));
        }
        cert.verify_signature(Some(ca.public_key())).map_err(|e| {
            format!("the client certificate's signature does not verify with the CA: {e}")
        })?;
        if !cert.validity().is_valid() {
            return Err("the client certificate is outside its validity period".into());
        }
        Ok(())
    }

    /// The certificate's ARN, when it exists and is ACTIVE.
    async fn active_certificate(&self, id: &str) -> Result<String, Refusal> {
        let described = match self
            .iot
            .describe_certificate()
            .certificate_id(id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(is_not_found) => {
                return Err(Refusal::not_authorized(format!(
                    "the certificate {id} is not registered in the account"
                )));
            }
            Err(e) => return Err(unavailable("DescribeCertificate", &e)),
        };
        let description = described
            .certificate_description()
            .ok_or_else(|| Refusal::server_unavailable("DescribeCertificate: no description"))?;
        if description.status() != Some(&CertificateStatus::Active) {
            return Err(Refusal::not_authorized(format!(
                "the certificate {id} is {:?}, not ACTIVE",
                description.status()
            )));
        }
        description
            .certificate_arn()
            .map(str::to_string)
            .ok_or_else(|| Refusal::server_unavailable("DescribeCertificate: no ARN"))
    }

    /// Whether the certificate is attached to the thing `thing` (false when no such thing).
    async fn is_attached(&self, thing: &str, arn: &str) -> Result<bool, Refusal> {
        if thing.is_empty() {
            return Ok(false);
        }
        match self
            .iot
            .list_thing_principals()
            .thing_name(thing)
            .send()
            .await
        {
            Ok(out) => Ok(out.principals().iter().any(|p| p == arn)),
            Err(e) if e.as_service_error().is_some_and(is_not_found) => Ok(false),
            Err(e) => Err(unavailable("ListThingPrincipals", &e)),
        }
    }

    /// The documents of the policies attached to the certificate.
    async fn policies(&self, arn: &str) -> Result<Vec<PolicyDocument>, Refusal> {
        let attached = self
            .iot
            .list_attached_policies()
            .target(arn)
            .send()
            .await
            .map_err(|e| unavailable("ListAttachedPolicies", &e))?;
        let mut documents = Vec::new();
        for name in attached.policies().iter().filter_map(|p| p.policy_name()) {
            let policy = self
                .iot
                .get_policy()
                .policy_name(name)
                .send()
                .await
                .map_err(|e| unavailable("GetPolicy", &e))?;
            let text = policy.policy_document().unwrap_or_default();
            let document = PolicyDocument::parse(text).map_err(|e| {
                Refusal::not_authorized(format!("the policy {name} cannot be evaluated: {e}"))
            })?;
            documents.push(document);
        }
        Ok(documents)
    }
}

fn unavailable(call: &str, e: &dyn std::fmt::Display) -> Refusal {
    Refusal::server_unavailable(format!("{call} failed: {e}"))
}

/// `arn:{partition}:iot:{region}:{account}` of a certificate ARN.
fn arn_prefix(cert_arn: &str) -> Option<String> {
    let parts: Vec<&str> = cert_arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "iot", region, account, resource] if resource.starts_with("cert/") => {
            Some(format!("arn:{partition}:iot:{region}:{account}"))
        }
        _ => None,
    }
}

#[async_trait]
impl Authenticator for AwsAuthenticator {
    async fn connect(&self, c: &ConnectRequest) -> Result<Session, Refusal> {
        let Some(leaf) = c.certificates.first() else {
            return Err(Refusal::not_authorized(
                "no client certificate: AWS IoT authenticates devices by their certificate",
            ));
        };
        self.check_chain(leaf).map_err(Refusal::not_authorized)?;
        let id = certificate_id(leaf);
        let arn = self.active_certificate(&id).await?;
        let arn_prefix = arn_prefix(&arn).ok_or_else(|| {
            Refusal::server_unavailable(format!("the certificate ARN {arn} is not one of AWS IoT"))
        })?;
        let is_attached = self.is_attached(&c.client_id, &arn).await?;
        let documents = self.policies(&arn).await?;
        let grants = Grants {
            documents,
            context: Context {
                client_id: c.client_id.clone(),
                thing_name: is_attached.then(|| c.client_id.clone()),
                is_attached,
            },
            arn_prefix,
        };
        let resource = format!("client/{}", c.client_id);
        match grants.decide("iot:Connect", &resource) {
            Decision::Allowed => {}
            denied => {
                return Err(Refusal::not_authorized(format!(
                    "iot:Connect on {resource} is {denied:?} by the certificate's {} \
                     polic(ies) (attached to the thing: {is_attached})",
                    grants.documents.len()
                )));
            }
        }
        Ok(Session::new(c.client_id.clone()).with_grants(grants))
    }

    fn publish(&self, session: &Session, topic: &str) -> Result<PublishTarget, Refusal> {
        let Some(grants) = session.grants::<Grants>() else {
            return Err(Refusal::publish(topic, "the session has no grants"));
        };
        match grants.decide("iot:Publish", &format!("topic/{topic}")) {
            Decision::Allowed => Ok(PublishTarget::topic(topic)),
            denied => Err(Refusal::publish(
                topic,
                format!("iot:Publish on topic/{topic} is {denied:?}: AWS IoT disconnects"),
            )),
        }
    }

    fn subscribe(
        &self,
        session: &Session,
        filter: &str,
        qos: u8,
    ) -> Result<SubscribeAnswer, Refusal> {
        let allowed = session.grants::<Grants>().is_some_and(|g| {
            g.decide("iot:Subscribe", &format!("topicfilter/{filter}"))
                .is_allowed()
        });
        Ok(if allowed {
            SubscribeAnswer::Granted(qos.min(1))
        } else {
            SubscribeAnswer::Failure
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_prefixes() {
        assert_eq!(
            arn_prefix("arn:aws:iot:eu-west-1:123456789012:cert/abc").as_deref(),
            Some("arn:aws:iot:eu-west-1:123456789012")
        );
        assert_eq!(
            arn_prefix("arn:aws:iot:eu-west-1:123456789012:thing/abc"),
            None
        );
        assert_eq!(arn_prefix("cert/abc"), None);
    }
}
