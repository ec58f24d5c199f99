//! The registry's own credentials and the device resource: fetched, cached, and the HTTP
//! calls on one device.

use super::*;

/// The registry's own credentials, as `getRegistryCredentials` hands them out.
pub(super) struct RegistryAccess {
    pub(super) system_key: String,
    pub(super) token: Secret,
    pub(super) url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct AccessAnswer {
    pub(super) system_key: String,
    pub(super) service_account_token: String,
    pub(super) url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeviceResource {
    #[serde(default)]
    pub(super) credentials: Vec<DeviceCredential>,
    #[serde(default)]
    pub(super) blocked: bool,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeviceCredential {
    pub(super) public_key: Option<PublicKeyCredential>,
    pub(super) expiration_time: Option<String>,
}

#[derive(Deserialize, Clone)]
pub(super) struct PublicKeyCredential {
    pub(super) format: String,
    pub(super) key: String,
}
impl ClearBladeRegistry {
    pub fn new(http: reqwest::Client, account: ServiceAccount, path: RegistryPath) -> Self {
        ClearBladeRegistry {
            http,
            account,
            path,
            retry: RetryPolicy::default(),
            access: tokio::sync::Mutex::new(None),
        }
    }

    /// Retries and one attempt's time limit for every call to ClearBlade.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub(super) fn device_path(&self, device_id: &str) -> String {
        format!("{}/devices/{device_id}", self.path.path())
    }

    /// The registry's access, from the cache or from the admin system.
    pub(super) async fn access(
        &self,
        deadline: Deadline,
        refresh: bool,
    ) -> Result<Arc<RegistryAccess>, UpstreamFailure> {
        let mut cached = self.access.lock().await;
        if let Some(access) = cached.as_ref().filter(|_| !refresh) {
            return Ok(access.clone());
        }
        let url = format!(
            "{}/api/v/1/code/{}/getRegistryCredentials",
            self.account.url, self.account.system_key
        );
        let body = json!({"region": self.path.region, "registry": self.path.registry, "project": self.path.project});
        let answer = upstream::send(&self.retry, deadline, || {
            self.http
                .post(&url)
                .header(TOKEN_HEADER, self.account.token.expose())
                .json(&body)
        })
        .await?;
        if !answer.status.is_success() {
            return Err(google_failure(&answer));
        }
        let got: AccessAnswer = answer.parse()?;
        let access = Arc::new(RegistryAccess {
            system_key: got.system_key,
            token: Secret::new(got.service_account_token),
            url: got.url.trim_end_matches('/').to_owned(),
        });
        *cached = Some(access.clone());
        Ok(access)
    }

    /// One device call; a refused token (401/403) fetches the registry's access again once.
    pub(super) async fn devices_call(
        &self,
        deadline: Deadline,
        method: reqwest::Method,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer, UpstreamFailure> {
        let mut refresh = false;
        loop {
            let access = self.access(deadline, refresh).await?;
            let mut url = format!(
                "{}/api/v/4/webhook/execute/{}/cloudiot_devices",
                access.url, access.system_key
            );
            for (n, (name, value)) in query.iter().enumerate() {
                url.push(if n == 0 { '?' } else { '&' });
                url.push_str(&format!("{name}={}", uri_component(value)));
            }
            let answer = upstream::send(&self.retry, deadline, || {
                let request = self
                    .http
                    .request(method.clone(), &url)
                    .header(TOKEN_HEADER, access.token.expose());
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
            let refused_token = matches!(
                answer.status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            );
            if refused_token && !refresh {
                tracing::info!(
                    status = answer.status.as_u16(),
                    "ClearBlade refused the registry token; fetching it again"
                );
                refresh = true;
                continue;
            }
            return Ok(answer);
        }
    }

    pub(super) async fn get_device(
        &self,
        deadline: Deadline,
        device_id: &str,
    ) -> Result<Option<DeviceResource>, UpstreamFailure> {
        let name = self.device_path(device_id);
        let answer = self
            .devices_call(deadline, reqwest::Method::GET, &[("name", &name)], None)
            .await?;
        match answer.status {
            s if s.is_success() => answer.parse().map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(google_failure(&answer)),
        }
    }

    pub(super) async fn set_credentials(
        &self,
        deadline: Deadline,
        device_id: &str,
        credentials: &[Value],
    ) -> Result<(), UpstreamFailure> {
        let name = self.device_path(device_id);
        let body = json!({"credentials": credentials});
        let query = [("name", name.as_str()), ("updateMask", "credentials")];
        let answer = self
            .devices_call(deadline, reqwest::Method::PATCH, &query, Some(&body))
            .await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(google_failure(&answer))
        }
    }

    pub(super) async fn delete_device(
        &self,
        deadline: Deadline,
        device_id: &str,
    ) -> Result<(), UpstreamFailure> {
        let name = self.device_path(device_id);
        let answer = self
            .devices_call(deadline, reqwest::Method::DELETE, &[("name", &name)], None)
            .await?;
        match answer.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Ok(()),
            _ => Err(google_failure(&answer)),
        }
    }
}
