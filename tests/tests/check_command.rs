//! `--check`, the operators' read-only smoke check, of every host binary: run as an operator
//! would, with exactly the settings the function runs with, against each cloud's test world and
//! against the real balenaCloud API server (open-balena-api).
//!
//! Each run asserts the exit code and the lines, that balenaCloud saw only GETs and the
//! registry's credentials did not change, and that a wrong key or a bad setting fails with
//! a clear line. What the checks print goes into the world's log book, so the secret audit the
//! world runs when it stops covers it.

use std::time::Duration;

use provision_emulators::balena::Fault;
use provision_testkit::checks::Target;
use provision_testkit::events::Call;
use provision_testkit::process::LogBook;
use provision_testkit::stack::Stack;
use provision_testkit::world::{
    AwsWorld, AzureWorld, Device, Fleet, GCP_PROJECT, GCP_REGION, GCP_REGISTRY, GcpWorld, SERVICE,
};
use provision_testkit::{aws, open_balena, paths};

/// What one run of a host binary printed, and how it ended.
struct Run {
    code: Option<i32>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout.join("\n"),
            self.stderr.join("\n")
        )
    }

    /// The one stdout line starting with `prefix`.
    fn line(&self, prefix: &str) -> &str {
        let found: Vec<&String> = self
            .stdout
            .iter()
            .filter(|l| l.starts_with(prefix))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one line starting {prefix:?}\n{}",
            self.show()
        );
        found[0]
    }
}

/// Runs `binary args` with exactly `env` (and PATH), as an operator runs the check, and keeps
/// all it printed in `logs` for the secret audit.
async fn run(binary: &str, args: &[&str], env: &[(String, String)], logs: &LogBook) -> Run {
    let mut command = tokio::process::Command::new(paths::binary(binary).unwrap());
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .unwrap_or_else(|_| panic!("{binary} {args:?} did not finish within 90 s"))
        .unwrap();
    let lines = |bytes: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let run = Run {
        code: output.status.code(),
        stdout: lines(&output.stdout),
        stderr: lines(&output.stderr),
    };
    for line in run.stdout.iter().chain(&run.stderr) {
        logs.push(format!("[{binary} {}] {line}", args.join(" ")));
    }
    run
}

/// `env` with `name` set to `value` (replaced if there).
fn with(env: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env.iter().filter(|(k, _)| k != name).cloned().collect();
    env.push((name.to_owned(), value.to_owned()));
    env
}

fn pairs(list: &[(&str, String)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The balenaCloud and caller settings every world's function runs with.
fn balena_env(fleet: &Fleet) -> Vec<(String, String)> {
    pairs(&[
        ("BALENA_API_URL", fleet.balena.url()),
        ("BALENA_API_KEY", fleet.secrets.function_key.clone()),
        (
            "PROVISION_OPERATOR_TOKEN",
            fleet.secrets.operator_token.clone(),
        ),
        ("PROVISION_ALLOW_UNAUTHENTICATED", "false".into()),
        // Debug logs (on stderr) so the secret audit covers them too.
        ("RUST_LOG", "debug".into()),
    ])
}

/// A world whose function the check is run for.
trait CheckedWorld: Stack {
    /// The host binary this cloud deploys.
    const HOST: &'static str;
    /// A registry setting that stops the function at start-up, and its value.
    const BAD_REGISTRY_SETTING: (&'static str, &'static str);

    /// The registry settings the world's function runs with.
    fn registry_env(&self) -> Vec<(String, String)>;

    /// The registry emulator's requests as (method, path), where it keeps a log (moto does not).
    fn registry_requests(&self) -> Option<Vec<(String, String)>>;

    fn clear_registry_requests(&self);

    fn function_env(&self) -> Vec<(String, String)> {
        let mut env = balena_env(self);
        env.extend(self.registry_env());
        env
    }
}

impl CheckedWorld for AwsWorld {
    const HOST: &'static str = "provision-lambda";
    const BAD_REGISTRY_SETTING: (&'static str, &'static str) = ("AWS_IOT_POLICY", " ");

    fn registry_env(&self) -> Vec<(String, String)> {
        let mut env = self.moto.function_env();
        env.push(("AWS_IOT_POLICY".into(), aws::POLICY.into()));
        env
    }

    fn registry_requests(&self) -> Option<Vec<(String, String)>> {
        None
    }

    fn clear_registry_requests(&self) {}
}

impl CheckedWorld for AzureWorld {
    const HOST: &'static str = "provision-azure";
    const BAD_REGISTRY_SETTING: (&'static str, &'static str) = (
        "CONNECTION_STRING",
        "HostName=provision-test.azure-devices.net;DeviceId=dev;SharedAccessKey=c2VjcmV0",
    );

    fn registry_env(&self) -> Vec<(String, String)> {
        pairs(&[
            (
                "CONNECTION_STRING",
                self.hub.connection_string("balena-provision"),
            ),
            ("AZURE_IOTHUB_ENDPOINT", self.hub.url()),
        ])
    }

    fn registry_requests(&self) -> Option<Vec<(String, String)>> {
        Some(
            self.hub
                .requests()
                .into_iter()
                .map(|r| (r.method, r.path_and_query))
                .collect(),
        )
    }

    fn clear_registry_requests(&self) {
        self.hub.clear_requests();
    }
}

impl CheckedWorld for GcpWorld {
    const HOST: &'static str = "provision-cloudrun";
    const BAD_REGISTRY_SETTING: (&'static str, &'static str) = ("GCP_REGION", "Europe West");

    fn registry_env(&self) -> Vec<(String, String)> {
        pairs(&[
            ("GCP_PROJECT_ID", GCP_PROJECT.into()),
            ("GCP_REGION", GCP_REGION.into()),
            ("CB_REGISTRY_ID", GCP_REGISTRY.into()),
            (
                "CB_SERVICE_ACCOUNT",
                self.clearblade.service_account_base64(),
            ),
        ])
    }

    fn registry_requests(&self) -> Option<Vec<(String, String)>> {
        Some(
            self.clearblade
                .requests()
                .into_iter()
                .map(|r| (r.method, r.path))
                .collect(),
        )
    }

    fn clear_registry_requests(&self) {
        self.clearblade.clear_requests();
    }
}

/// Asserts that what the checks did was reading: only GETs to balenaCloud and (where the
/// emulator logs requests) to the registry, bar ClearBlade's `getRegistryCredentials`, a POST
/// that reads; and the registry's credentials unchanged.
async fn assert_read_only<W: CheckedWorld>(
    world: &W,
    credentials_before: &[provision_testkit::stack::Credential],
) {
    let balena = world.balena.requests();
    assert!(!balena.is_empty(), "the checks read balenaCloud");
    let writes: Vec<String> = balena
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(writes.is_empty(), "balenaCloud saw only GETs: {writes:?}");
    if let Some(requests) = world.registry_requests() {
        assert!(!requests.is_empty(), "the checks read the registry");
        let writes: Vec<&(String, String)> = requests
            .iter()
            .filter(|(method, path)| method != "GET" && !path.ends_with("/getRegistryCredentials"))
            .collect();
        assert!(writes.is_empty(), "the registry saw only reads: {writes:?}");
    }
    assert_eq!(
        world.credentials().await,
        credentials_before,
        "the registry's credentials are unchanged"
    );
}

/// The check of a world's function: passes with its settings (for a random UUID and for a
/// provisioned device, its device and its service variables), only reads, and fails with a
/// clear line for a wrong key, a 400 from balenaCloud, a service the device lacks, and with
/// one line for a bad setting.
async fn check_of<W: CheckedWorld>() {
    let world = W::start().await.unwrap();
    let env = world.function_env();
    let device: Device = world.add_device().await;
    let created = world
        .call(Call::post(Target::Device.body(&device.uuid)).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let credentials_before = world.credentials().await;
    world.balena.clear_requests();
    world.clear_registry_requests();

    // A random UUID: "no such device" is the passing answer.
    let random = run(W::HOST, &["--check"], &env, world.logs()).await;
    assert_eq!(random.code, Some(0), "{}", random.show());
    assert_eq!(
        random.stdout.len(),
        4,
        "one line per check\n{}",
        random.show()
    );
    assert!(
        random.stdout.iter().all(|l| l.starts_with("ok   ")),
        "{}",
        random.show()
    );
    random.line(&format!("ok   configuration loaded: registry {}", W::CLOUD));
    assert!(
        random
            .line("ok   balenaCloud accepts the function key and its device read (no such device: ")
            .ends_with(')')
    );
    assert!(
        random.stdout[2].contains("accepts the function's credentials: "),
        "{}",
        random.show()
    );
    assert!(
        random.stdout[3].contains("no entry, as expected for a random UUID"),
        "{}",
        random.show()
    );

    // The provisioned device: its variables, lock tag and registry entry, read.
    let uuid = device.uuid.as_str();
    let known = run(W::HOST, &["--check", "--uuid", uuid], &env, world.logs()).await;
    assert_eq!(known.code, Some(0), "{}", known.show());
    let balena =
        known.line("ok   balenaCloud accepts the function key and its device read (device ");
    assert!(
        balena.contains(uuid) && balena.contains("device variables stored: "),
        "{balena}"
    );
    assert!(
        balena.contains(W::KEY_VAR) && balena.contains("latest lock tag provision-lock-"),
        "{balena}"
    );
    assert!(
        known.stdout[3].contains("entry with 1 credential(s), 1 active"),
        "{}",
        known.show()
    );

    // Its service: installed, with no variables.
    let service = run(
        W::HOST,
        &["--check", "--uuid", uuid, "--service", SERVICE],
        &env,
        world.logs(),
    )
    .await;
    assert_eq!(service.code, Some(0), "{}", service.show());
    assert!(
        service.stdout[1].contains(&format!(
            "no provisioning service '{SERVICE}' variables stored"
        )),
        "{}",
        service.show()
    );

    // provision-cloudrun serving this cloud checks the same.
    let cloudrun_env = with(&env, "PROVISION_CLOUD", W::CLOUD.as_str());
    let cloudrun = run(
        "provision-cloudrun",
        &["--check", "--uuid", uuid],
        &cloudrun_env,
        world.logs(),
    )
    .await;
    assert_eq!(cloudrun.code, Some(0), "{}", cloudrun.show());
    assert!(
        cloudrun.stdout.iter().all(|l| l.starts_with("ok   ")),
        "{}",
        cloudrun.show()
    );

    assert_read_only(&world, &credentials_before).await;

    // A service the device does not run: the check says so.
    let missing = run(
        W::HOST,
        &["--check", "--uuid", uuid, "--service", "no-such-service"],
        &env,
        world.logs(),
    )
    .await;
    assert_eq!(missing.code, Some(1), "{}", missing.show());
    missing.line("FAIL balenaCloud: device ");
    assert!(
        missing.stdout[1].contains("runs no service 'no-such-service'"),
        "{}",
        missing.show()
    );

    // A key balenaCloud does not accept.
    let wrong_key = with(&env, "BALENA_API_KEY", "not-the-function-key-0123456789");
    let refused = run(W::HOST, &["--check"], &wrong_key, world.logs()).await;
    assert_eq!(refused.code, Some(1), "{}", refused.show());
    refused.line("FAIL balenaCloud refused the function key with 401");
    assert_eq!(
        refused
            .stdout
            .iter()
            .filter(|l| l.starts_with("FAIL"))
            .count(),
        1,
        "only balenaCloud fails\n{}",
        refused.show()
    );

    // balenaCloud refusing the read itself (as it answers a URL it cannot parse).
    world
        .balena
        .emulator()
        .inject_fault(Fault::new(400).resource("device"));
    let malformed = run(W::HOST, &["--check"], &env, world.logs()).await;
    world.balena.emulator().clear_faults();
    assert_eq!(malformed.code, Some(1), "{}", malformed.show());
    malformed.line("FAIL balenaCloud refused the function's device read with 400");

    // A bad setting: the host's own start-up line, and nothing else.
    let (name, value) = W::BAD_REGISTRY_SETTING;
    for (name, value) in [(name, value), ("PROVISION_REQUEST_BUDGET_MS", "soon")] {
        let bad = run(
            W::HOST,
            &["--check"],
            &with(&env, name, value),
            world.logs(),
        )
        .await;
        assert_eq!(bad.code, Some(1), "{}", bad.show());
        assert!(bad.stdout.is_empty(), "{}", bad.show());
        assert_eq!(bad.stderr.len(), 1, "one line\n{}", bad.show());
        assert!(
            bad.stderr[0].starts_with(&format!("{}: configuration: {name} ", W::HOST)),
            "{}",
            bad.show()
        );
    }

    // A mistyped command line: one line, the usage's exit code.
    let typo = run(
        W::HOST,
        &["--check", "--uuid", "not-a-uuid"],
        &env,
        world.logs(),
    )
    .await;
    assert_eq!(typo.code, Some(2), "{}", typo.show());
    assert_eq!(typo.stderr.len(), 1, "{}", typo.show());
    assert!(
        typo.stderr[0].contains("--uuid must be 32 or 62 lowercase hex characters"),
        "{}",
        typo.show()
    );

    world.stop().await;
}

#[tokio::test]
async fn aws_check_reads_only_and_says_what_fails() {
    check_of::<AwsWorld>().await;
}

#[tokio::test]
async fn azure_check_reads_only_and_says_what_fails() {
    check_of::<AzureWorld>().await;
}

#[tokio::test]
async fn gcp_check_reads_only_and_says_what_fails() {
    check_of::<GcpWorld>().await;
}

#[tokio::test]
async fn help_documents_the_check() {
    let logs = LogBook::default();
    for host in ["provision-lambda", "provision-azure", "provision-cloudrun"] {
        let help = run(host, &["--help"], &[], &logs).await;
        assert_eq!(help.code, Some(0), "{}", help.show());
        let text = help.stdout.join("\n");
        for flag in [
            "--check",
            "--uuid <device uuid>",
            "--service <service name>",
            "Writes nothing",
        ] {
            assert!(text.contains(flag), "{host} --help names {flag:?}:\n{text}");
        }
    }
}

/// Against the real balenaCloud API server, with a fleet's user key as the function key (the
/// registry from the IoT Hub emulator): the check accepts the server's answers to the
/// function's exact device read, and a wrong key fails it.
#[tokio::test]
async fn real_balena_accepts_the_functions_device_read() {
    let fleet = open_balena::fixture(1).await.unwrap();
    let device = &fleet.devices[0];
    let world = AzureWorld::start().await.unwrap();
    let mut env = world.registry_env();
    env.extend(pairs(&[
        ("BALENA_API_URL", open_balena::url()),
        ("BALENA_API_KEY", fleet.user_key.clone()),
    ]));
    let logs = world.logs();

    let random = run(AzureWorld::HOST, &["--check"], &env, logs).await;
    assert_eq!(random.code, Some(0), "{}", random.show());
    random.line("ok   balenaCloud accepts the function key and its device read (no such device: ");

    let known = run(
        AzureWorld::HOST,
        &["--check", "--uuid", &device.uuid],
        &env,
        logs,
    )
    .await;
    assert_eq!(known.code, Some(0), "{}", known.show());
    let line = known.line("ok   balenaCloud accepts the function key and its device read (device ");
    assert!(line.contains(&device.uuid), "{line}");

    let service = run(
        AzureWorld::HOST,
        &[
            "--check",
            "--uuid",
            &device.uuid,
            "--service",
            &fleet.service_name,
        ],
        &env,
        logs,
    )
    .await;
    assert_eq!(service.code, Some(0), "{}", service.show());
    service.line(&format!(
        "ok   balenaCloud accepts the function key and its device read (device {}: no provisioning service '{}' variables stored",
        device.uuid, fleet.service_name
    ));

    let refused = run(
        AzureWorld::HOST,
        &["--check", "--uuid", &device.uuid],
        &with(&env, "BALENA_API_KEY", "not-the-function-key-0123456789"),
        logs,
    )
    .await;
    assert_eq!(refused.code, Some(1), "{}", refused.show());
    refused.line("FAIL balenaCloud refused the function key with 401");

    for outcome in [&random, &known, &service, &refused] {
        let printed = outcome
            .stdout
            .iter()
            .chain(&outcome.stderr)
            .any(|l| l.contains(&fleet.user_key));
        assert!(
            !printed,
            "the fleet's key is never printed\n{}",
            outcome.show()
        );
    }
    world.stop().await;
}
