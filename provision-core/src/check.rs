//! The operator's read-only smoke check, `--check` of every host. Run with the settings a
//! deployment runs with, it shows that they load, that balenaCloud accepts the function's key
//! and the exact device read the function makes, and that the registry accepts the function's
//! credentials and its device read. It only reads: nothing is written to balenaCloud or to the
//! registry. Each check prints one line, `ok   ...` or `FAIL ...`, never with a secret.
//!
//! The hosts load their configuration as at start-up, then hand it to [`run_and_print`].

use std::fmt;

use crate::balena::{BalenaClient, DeviceRecord, LockTag};
use crate::config::Settings;
use crate::error::UpstreamFailure;
use crate::ids::{DeviceUuid, RegistryDeviceId, ServiceName};
use crate::registry::{Cloud, Registry, RegistryError, RegistryState};
use crate::retry::{Deadline, RetryPolicy};

/// The options of the check, for the hosts' `--help`.
pub const HELP: &str = "\
Read-only check, for operators (run it with the function's settings in the environment):
  --check                         load the settings as at start-up, then check that balenaCloud accepts
                                  the function's key and its device read, and that the registry accepts
                                  the function's credentials and its device read. One line per check;
                                  exit 0 only when all pass, 1 otherwise. Writes nothing anywhere.
  --uuid <device uuid>            with --check: read this device (its variables, lock tags and registry
                                  entry) instead of a random UUID that no device has
  --service <service name>        with --check: read the service's variables, as a request with
                                  balena_service does";

const USAGE: &str = "--check [--uuid <device uuid>] [--service <service name>]";

/// What `--check` was asked to read.
#[derive(Clone, Debug, Default)]
pub struct CheckRequest {
    /// The device to read; a random UUID (no such device) when `None`.
    pub uuid: Option<DeviceUuid>,
    /// Read this service's variables instead of the device's.
    pub service: Option<ServiceName>,
}

impl CheckRequest {
    /// Reads `--check [--uuid <uuid>] [--service <name>]` (also `--uuid=<uuid>`) from the
    /// host's arguments, program name excluded. `Ok(None)` without `--check`: the host serves as
    /// usual, and ignores its arguments as it always did. `Err` is a line for the operator.
    pub fn from_args(
        args: impl IntoIterator<Item = String>,
    ) -> Result<Option<CheckRequest>, String> {
        let args: Vec<String> = args.into_iter().collect();
        let names_flag = |arg: &String, flag: &str| {
            arg == flag
                || arg
                    .strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        };
        if !args.iter().any(|a| a == "--check") {
            return match args
                .iter()
                .any(|a| names_flag(a, "--uuid") || names_flag(a, "--service"))
            {
                true => Err(format!(
                    "--uuid and --service go with --check (usage: {USAGE})"
                )),
                false => Ok(None),
            };
        }
        let mut request = CheckRequest::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("{name} needs a value (usage: {USAGE})"))
            };
            match flag.as_str() {
                "--check" if inline.is_none() => {}
                "--uuid" => {
                    let text = value("--uuid <device uuid>")?;
                    request.uuid =
                        Some(DeviceUuid::parse(&text).map_err(|e| format!("--uuid {e}"))?);
                }
                "--service" => {
                    let text = value("--service <service name>")?;
                    request.service =
                        Some(ServiceName::parse(&text).map_err(|e| format!("--service {e}"))?);
                }
                _ => return Err(format!("unknown argument '{arg}' (usage: {USAGE})")),
            }
        }
        Ok(Some(request))
    }
}

/// The outcome of one check: one line for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    pub passed: bool,
    pub text: String,
}

impl CheckLine {
    fn pass(text: impl Into<String>) -> Self {
        CheckLine {
            passed: true,
            text: text.into(),
        }
    }

    fn fail(text: impl Into<String>) -> Self {
        CheckLine {
            passed: false,
            text: text.into(),
        }
    }
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            if self.passed { "ok  " } else { "FAIL" },
            self.text
        )
    }
}

/// Runs every check and prints one line for each on stdout. `true` when all passed.
pub async fn run_and_print(
    settings: &Settings,
    registry: &dyn Registry,
    request: &CheckRequest,
) -> bool {
    let lines = run(settings, registry, request).await;
    for line in &lines {
        println!("{line}");
    }
    lines.iter().all(|line| line.passed)
}

/// Runs every check, reading only: the configuration's summary, balenaCloud's device read, the
/// registry's probe and its device read (the three reads at once, each within the request budget).
pub async fn run(
    settings: &Settings,
    registry: &dyn Registry,
    request: &CheckRequest,
) -> Vec<CheckLine> {
    // The client exactly as the function builds it (`crate::build`).
    let balena = BalenaClient::new(
        crate::upstream::http_client(),
        &settings.balena_api_url,
        settings.balena_api_key.clone(),
        RetryPolicy::with_attempt_timeout(settings.upstream_timeout),
    );
    let uuid = request.uuid.clone().unwrap_or_else(random_uuid);
    let device_id = registry.device_id(&uuid);
    let names = registry.variable_names();
    let (record, probe, entry) = tokio::join!(
        balena.read_device(
            Deadline::after(settings.request_budget),
            &uuid,
            request.service.as_ref(),
            names
        ),
        registry.probe(Deadline::after(settings.request_budget)),
        registry.inspect(Deadline::after(settings.request_budget), &device_id),
    );
    let cloud = registry_name(registry.cloud());
    vec![
        configuration_line(settings, registry.cloud()),
        balena_line(&uuid, request, record, &settings.balena_api_url),
        match probe {
            Ok(seen) => CheckLine::pass(format!(
                "registry {cloud} accepts the function's credentials: {seen}"
            )),
            Err(failure) => CheckLine::fail(format!(
                "registry {cloud} did not accept the function's read-only probe: {failure}"
            )),
        },
        entry_line(&cloud, &device_id, request.uuid.is_some(), entry),
    ]
}

/// A UUID no device has (the chance of a clash is nil), for checking the read alone.
fn random_uuid() -> DeviceUuid {
    DeviceUuid::parse(&uuid::Uuid::new_v4().simple().to_string())
        .expect("a v4 UUID in simple form is 32 lowercase hex characters")
}

/// `aws (AWS IoT Core)`: the cloud's name and its product, from the table of clouds.
fn registry_name(cloud: Cloud) -> String {
    match crate::registry::clouds::row(cloud) {
        Some(row) => format!("{} ({})", row.name(), row.product),
        None => cloud.as_str().to_owned(),
    }
}

/// What the settings say, never a secret: which registry, which balenaCloud, who may call.
fn configuration_line(settings: &Settings, cloud: Cloud) -> CheckLine {
    let callers = match (
        &settings.auth.operator_token,
        settings.auth.allow_unauthenticated,
    ) {
        (_, true) => {
            "callers: device keys, the operator token, and anyone for a first provisioning (PROVISION_ALLOW_UNAUTHENTICATED=true)"
        }
        (Some(_), false) => "callers: device keys and the operator token",
        (None, false) => "callers: device keys (no operator token)",
    };
    let users = if settings.auth.accept_user_keys {
        ", and user keys that see the device (PROVISION_ACCEPT_USER_KEYS=true)"
    } else {
        ""
    };
    CheckLine::pass(format!(
        "configuration loaded: registry {}, balenaCloud API {}, {callers}{users}, request budget {} ms",
        cloud.as_str(),
        displayed_url(&settings.balena_api_url),
        settings.request_budget.as_millis()
    ))
}

/// A URL without any user name, password, query or fragment it may carry.
fn displayed_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

fn balena_line(
    uuid: &DeviceUuid,
    request: &CheckRequest,
    record: Result<Option<DeviceRecord>, UpstreamFailure>,
    api: &str,
) -> CheckLine {
    const PASSED: &str = "balenaCloud accepts the function key and its device read";
    match record {
        Ok(None) if request.uuid.is_none() => {
            CheckLine::pass(format!("{PASSED} (no such device: {uuid})"))
        }
        Ok(None) => CheckLine::fail(format!(
            "balenaCloud: the function key cannot see device {uuid}: no such device, or BALENA_API_KEY has no access to its fleet"
        )),
        Ok(Some(record)) => match (&request.service, record.target) {
            (Some(service), None) => CheckLine::fail(format!(
                "balenaCloud: device {uuid} runs no service '{service}', so its variables cannot be stored there \
                 (is the service in the release the device runs?)"
            )),
            (service, Some(_)) => {
                let whose = service.as_ref().map_or_else(
                    || "device variables".to_owned(),
                    |s| format!("service '{s}' variables"),
                );
                let stored = if record.vars.is_empty() {
                    format!("no provisioning {whose} stored")
                } else {
                    format!(
                        "{whose} stored: {}",
                        record.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                let lock = record.head_lock().map_or_else(
                    || "no lock tag".to_owned(),
                    |l| format!("latest lock tag {}", LockTag::key(l.generation)),
                );
                CheckLine::pass(format!("{PASSED} (device {uuid}: {stored}; {lock})"))
            }
            // A device read without a service always has its variables' target.
            (None, None) => CheckLine::pass(format!("{PASSED} (device {uuid})")),
        },
        Err(UpstreamFailure::Refused {
            status: status @ (401 | 403),
            detail,
        }) => CheckLine::fail(format!(
            "balenaCloud refused the function key with {status}{}: BALENA_API_KEY is not a key {} accepts",
            in_parentheses(&detail),
            displayed_url(api)
        )),
        Err(UpstreamFailure::Refused { status, detail }) => CheckLine::fail(format!(
            "balenaCloud refused the function's device read with {status}{}",
            in_parentheses(&detail)
        )),
        Err(failure) => CheckLine::fail(format!(
            "balenaCloud at {} could not be read: {failure}",
            displayed_url(api)
        )),
    }
}

fn entry_line(
    cloud: &str,
    device_id: &RegistryDeviceId,
    asked_for: bool,
    entry: Result<RegistryState, RegistryError>,
) -> CheckLine {
    match entry {
        Ok(state) if !state.entry => CheckLine::pass(format!(
            "registry {cloud} accepts the function's device read ({device_id}: no entry{})",
            if asked_for {
                ""
            } else {
                ", as expected for a random UUID"
            }
        )),
        Ok(state) => {
            let active = state.credentials.iter().filter(|c| c.active).count();
            CheckLine::pass(format!(
                "registry {cloud} accepts the function's device read ({device_id}: entry with {} credential(s), {active} active)",
                state.credentials.len()
            ))
        }
        Err(failure) => CheckLine::fail(format!(
            "registry {cloud} did not accept the function's device read of {device_id}: {failure}"
        )),
    }
}

/// An upstream's error text, cut short, as ` (text)`; nothing when it gave none. (The text is
/// already free of control characters.)
fn in_parentheses(detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", detail.chars().take(120).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<CheckRequest>, String> {
        CheckRequest::from_args(args.iter().map(|a| a.to_string()))
    }

    const UUID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn without_check_the_arguments_are_ignored_as_before() {
        assert!(parse(&[]).unwrap().is_none());
        assert!(parse(&["serve", "--port", "1"]).unwrap().is_none());
    }

    #[test]
    fn reads_uuid_and_service_in_both_spellings() {
        let request = parse(&["--check", "--uuid", UUID, "--service=cloud-relay"])
            .unwrap()
            .unwrap();
        assert_eq!(request.uuid.unwrap().as_str(), UUID);
        assert_eq!(request.service.unwrap().as_str(), "cloud-relay");
        let request = parse(
            &["--uuid=".to_owned() + UUID, "--check".into()]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap()
        .unwrap();
        assert!(request.uuid.is_some() && request.service.is_none());
    }

    #[test]
    fn refuses_what_it_cannot_use_in_one_line() {
        for (args, says) in [
            (
                vec!["--check", "--uuid"],
                "--uuid <device uuid> needs a value",
            ),
            (vec!["--check", "--uuid", "ABC"], "--uuid must be 32 or 62"),
            (
                vec!["--check", "--service", "-x"],
                "--service must start with",
            ),
            (vec!["--check", "--verbose"], "unknown argument '--verbose'"),
            (vec!["--uuid", UUID], "go with --check"),
        ] {
            let error = parse(&args).unwrap_err();
            assert!(error.contains(says), "{args:?}: {error}");
            assert!(!error.contains('\n'));
        }
    }

    #[test]
    fn lines_start_with_their_verdict() {
        assert_eq!(CheckLine::pass("a").to_string(), "ok   a");
        assert_eq!(CheckLine::fail("b").to_string(), "FAIL b");
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            displayed_url("https://user:pw@api.example.com/?apikey=k"),
            "https://api.example.com"
        );
    }
}
