//! Writing and deleting the device's (or a service's) environment variables: created without
//! overwriting, set, and deleted only where they still hold this request's values.

use super::*;

impl BalenaClient {
    /// Sets one variable: PATCH when it is known to exist, else POST, falling back to the other
    /// when the row turns out to be (or not be) there after all.
    pub async fn write_var(
        &self,
        deadline: Deadline,
        target: VarTarget,
        existing: Option<i64>,
        name: &str,
        value: &Secret,
    ) -> Result<(), UpstreamFailure> {
        let resource = target.resource();
        let (parent, parent_id) = target.parent();
        if let Some(id) = existing {
            let url = format!("{}/{resource}({id})", self.api);
            let answer = self
                .send(
                    deadline,
                    reqwest::Method::PATCH,
                    &url,
                    &self.key,
                    Some(json!({"value": value.expose()})),
                )
                .await?;
            if answer.status.is_success() {
                return Ok(());
            }
            if answer.status != StatusCode::NOT_FOUND {
                return Err(refused(&answer));
            }
        }
        let url = format!("{}/{resource}", self.api);
        let body = json!({ parent: parent_id, "name": name, "value": value.expose() });
        let answer = self
            .send(deadline, reqwest::Method::POST, &url, &self.key, Some(body))
            .await?;
        if answer.status.is_success() {
            return Ok(());
        }
        if !is_duplicate(&answer) {
            return Err(refused(&answer));
        }
        // It exists after all: update it in place, addressed by its unique pair.
        let filter = format!("{parent} eq {parent_id} and name eq {}", literal(name));
        let url = format!("{}/{resource}?$filter={}", self.api, expression(&filter));
        let answer = self
            .send(
                deadline,
                reqwest::Method::PATCH,
                &url,
                &self.key,
                Some(json!({"value": value.expose()})),
            )
            .await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(refused(&answer))
        }
    }

    /// Creates a variable that must not exist yet: `false` when it does (balenaCloud's unique
    /// (parent, name) answers 409), and nothing is overwritten.
    pub async fn create_var(
        &self,
        deadline: Deadline,
        target: VarTarget,
        name: &str,
        value: &Secret,
    ) -> Result<bool, UpstreamFailure> {
        let (parent, parent_id) = target.parent();
        let url = format!("{}/{}", self.api, target.resource());
        let body = json!({ parent: parent_id, "name": name, "value": value.expose() });
        let answer = self
            .send(deadline, reqwest::Method::POST, &url, &self.key, Some(body))
            .await?;
        match answer.status {
            s if s.is_success() => Ok(true),
            _ if is_duplicate(&answer) => Ok(false),
            _ => Err(refused(&answer)),
        }
    }

    /// Deletes a variable only while it still holds `value`, so undoing this request's write
    /// never removes someone else's. The value (a certificate or a private key) never goes into
    /// a URL, where access logs would keep it: the rows of that name are read, compared here,
    /// and the matching one deleted by its id.
    pub async fn delete_var_if(
        &self,
        deadline: Deadline,
        target: VarTarget,
        name: &str,
        value: &Secret,
    ) -> Result<(), UpstreamFailure> {
        let (parent, parent_id) = target.parent();
        let filter = format!("{parent} eq {parent_id} and name eq {}", literal(name));
        let url = format!(
            "{}/{}?$select=id,name,value&$filter={}",
            self.api,
            target.resource(),
            expression(&filter)
        );
        let answer = self
            .send(deadline, reqwest::Method::GET, &url, &self.key, None)
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        let rows: Rows<VarRow> = answer.parse()?;
        let ours: Vec<i64> = rows
            .d
            .into_iter()
            .filter(|row| row.name == name && row.value == value.expose())
            .map(|row| row.id)
            .collect();
        self.delete_var_rows(deadline, target, &ours).await
    }

    /// Deletes exactly these variable rows (by id), in one request: a variable stored again
    /// since they were read is a new row and stays.
    pub async fn delete_var_rows(
        &self,
        deadline: Deadline,
        target: VarTarget,
        ids: &[i64],
    ) -> Result<(), UpstreamFailure> {
        if ids.is_empty() {
            return Ok(());
        }
        let (parent, parent_id) = target.parent();
        let list: Vec<String> = ids.iter().map(|id| format!("id eq {id}")).collect();
        let filter = format!("{parent} eq {parent_id} and ({})", list.join(" or "));
        self.delete_where(deadline, target.resource(), &filter)
            .await
    }

    /// Deletes the target's variables of these names, whatever their rows, in one request.
    /// Deleting what is not there succeeds.
    pub async fn delete_vars(
        &self,
        deadline: Deadline,
        target: VarTarget,
        names: &[&str],
    ) -> Result<(), UpstreamFailure> {
        let (parent, parent_id) = target.parent();
        let filter = format!("{parent} eq {parent_id} and ({})", any_name("name", names));
        self.delete_where(deadline, target.resource(), &filter)
            .await
    }
}
