//! Revoking a certificate: deactivated, detached from the thing and the policy, deleted.

use super::*;

impl AwsIotRegistry {
    pub(super) async fn revoke_certificate(
        &self,
        deadline: Deadline,
        thing: &str,
        credential: &RegisteredCredential,
    ) -> Result<(), RegistryError> {
        let id = credential.id.as_str();
        let arn = certificate(credential)?.arn.clone();
        let detach = || async {
            ok_if_gone(
                call(
                    deadline,
                    self.client
                        .detach_thing_principal()
                        .thing_name(thing)
                        .principal(&arn)
                        .send(),
                )
                .await,
            )
        };
        if !credential.is_ours() {
            // Not the function's: it only leaves this thing.
            return detach().await;
        }
        // Deactivate first, alone: if that fails the certificate is exactly as it was (still
        // attached, still named by the variables, which the caller then keeps); once it has
        // succeeded the certificate no longer authenticates, and what follows is tidying. A
        // forced delete then removes it with its policy attachment.
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
        )?;
        detach().await?;
        self.delete_certificate(deadline, id).await
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
