//! Revoking a certificate: deactivated while detached from the thing, then deleted with its
//! policy attachment.

use super::*;

impl AwsIotRegistry {
    pub(super) async fn revoke_certificate(
        &self,
        deadline: Deadline,
        thing: &str,
        credential: &RegisteredCredential,
    ) -> Result<(), RegistryError> {
        let arn = certificate(credential)?.arn.as_str();
        self.unusable(deadline, thing, credential, arn).await?;
        if !credential.is_ours() {
            // Not the function's: it only leaves this thing.
            return Ok(());
        }
        // No longer authenticating: a forced delete removes it with its policy attachment.
        self.delete_certificate(deadline, &credential.id).await
    }

    /// Deactivates a certificate (not one that is not the function's) while detaching it from
    /// the thing. Should the deactivation fail, the certificate is attached again: left exactly
    /// as it was (still active, still found on the thing, still named by the variables, which
    /// the caller then keeps).
    pub(super) async fn unusable(
        &self,
        deadline: Deadline,
        thing: &str,
        credential: &RegisteredCredential,
        arn: &str,
    ) -> Result<(), RegistryError> {
        let id = credential.id.as_str();
        let deactivate = async {
            if !credential.is_ours() {
                return Ok(());
            }
            ok_if_gone(
                call(
                    deadline,
                    self.client
                        .update_certificate()
                        .certificate_id(id)
                        .new_status(CertificateStatus::Inactive)
                        .send(),
                )
                .await,
            )
        };
        let detach = call(
            deadline,
            self.client
                .detach_thing_principal()
                .thing_name(thing)
                .principal(arn)
                .send(),
        );
        let (inactive, detached) = tokio::join!(deactivate, detach);
        let detached = ok_if_gone(detached);
        if inactive.is_err()
            && detached.is_ok()
            && let Err(f) = call(
                deadline,
                self.client
                    .attach_thing_principal()
                    .thing_name(thing)
                    .principal(arn)
                    .send(),
            )
            .await
        {
            tracing::error!(certificate = %id, error = %f.failure, "could not attach again a certificate that is still active");
        }
        inactive.and(detached)
    }

    /// Deletes an inactive, detached certificate (forced: its policy attachment goes with it).
    pub(super) async fn delete_certificate(
        &self,
        deadline: Deadline,
        id: &str,
    ) -> Result<(), RegistryError> {
        // Detaching a thing propagates asynchronously in AWS: a DeleteConflict right after it is
        // expected and worth a few short retries.
        let mut wait = Duration::from_millis(100);
        loop {
            match call(
                deadline,
                self.client
                    .delete_certificate()
                    .certificate_id(id)
                    .force_delete(true)
                    .send(),
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(f) if f.is(NOT_FOUND) => return Ok(()),
                Err(f)
                    if f.is("DeleteConflictException")
                        && wait < deadline.remaining()
                        && wait <= Duration::from_secs(2) =>
                {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(f) => return Err(f.into()),
            }
        }
    }
}
