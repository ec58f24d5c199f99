//! The lock's tags: taking a generation (creating its tag), marking it released, deleting old
//! ones.

use super::*;

impl BalenaClient {
    /// Tries to take the device's lock by creating generation `generation` of its lock tag:
    /// `true` when this call created it, `false` when another request did first.
    pub async fn try_lock(
        &self,
        deadline: Deadline,
        device_id: BalenaDeviceId,
        generation: u64,
        value: &str,
    ) -> Result<bool, UpstreamFailure> {
        let url = format!("{}/device_tag", self.api);
        let body =
            json!({"device": device_id, "tag_key": LockTag::key(generation), "value": value});
        let answer = self
            .send(deadline, reqwest::Method::POST, &url, &self.key, Some(body))
            .await?;
        match answer.status {
            s if s.is_success() => Ok(true),
            // Another request's, or this one's: a retried POST whose first attempt was written
            // but whose answer was lost (a timeout) finds its own tag. The value names the
            // holder and its expiry, so it is this request's only if it is equal.
            _ if is_duplicate(&answer) => {
                let filter = format!(
                    "device eq {device_id} and tag_key eq {}",
                    literal(&LockTag::key(generation))
                );
                let url = format!(
                    "{}/device_tag?$select=value&$filter={}",
                    self.api,
                    expression(&filter)
                );
                let found = self
                    .send(deadline, reqwest::Method::GET, &url, &self.key, None)
                    .await?;
                if !found.status.is_success() {
                    return Err(refused(&found));
                }
                let rows: Rows<ValueRow> = found.parse()?;
                Ok(rows.d.iter().any(|r| r.value == value))
            }
            // The device was deleted since it was read: pinejs's foreign-key 409.
            StatusCode::CONFLICT
                if String::from_utf8_lossy(&answer.body).contains("referenced by device") =>
            {
                Err(UpstreamFailure::Refused {
                    status: 404,
                    detail: "the device no longer exists".into(),
                })
            }
            _ => Err(refused(&answer)),
        }
    }

    /// Rewrites a lock tag's value, if it still holds `from` (so a holder only ever changes its
    /// own): how a holder says it is done.
    pub async fn rewrite_lock(
        &self,
        deadline: Deadline,
        device_id: BalenaDeviceId,
        generation: u64,
        from: &str,
        to: &str,
    ) -> Result<(), UpstreamFailure> {
        let filter = format!(
            "device eq {device_id} and tag_key eq {} and value eq {}",
            literal(&LockTag::key(generation)),
            literal(from)
        );
        let url = format!("{}/device_tag?$filter={}", self.api, expression(&filter));
        let answer = self
            .send(
                deadline,
                reqwest::Method::PATCH,
                &url,
                &self.key,
                Some(json!({"value": to})),
            )
            .await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(refused(&answer))
        }
    }

    /// Deletes lock tags by id (old generations no request can follow any more).
    pub async fn delete_locks(
        &self,
        deadline: Deadline,
        device_id: BalenaDeviceId,
        ids: &[i64],
    ) -> Result<(), UpstreamFailure> {
        if ids.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = ids.iter().map(|id| format!("id eq {id}")).collect();
        let filter = format!("device eq {device_id} and ({})", list.join(" or "));
        self.delete_where(deadline, "device_tag", &filter).await
    }
}
