//! The flow in process: the real balenaCloud client against the in-process balenaCloud
//! emulator (one attempt per call, so an injected fault fails the step), and a registry kept in
//! memory whose steps can be made to fail. Every branch of provision, repair, rotation, DELETE
//! and their undoing, in milliseconds; the process-level suites (tests/) run the same flow
//! against the clouds' emulators, moto and the real balenaCloud API server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use provision_emulators::balena::{BalenaEmulator, Fault};

use super::*;

use crate::balena::BalenaClient;
use crate::credentials::{DeviceCsr, DeviceKey};
use crate::retry::RetryPolicy;
use crate::secret::Secret;

mod memory;

use memory::{CERT, KEY, MemoryRegistry, Step};

/// One device in balenaCloud (the emulator), the registry in memory, and the flow over both.
struct Bench {
    balena: BalenaEmulator,
    registry: Arc<MemoryRegistry>,
    flow: Provisioner,
    device: i64,
    uuid: DeviceUuid,
    key: Secret,
}

impl Bench {
    async fn start() -> Bench {
        Bench::with_registry(MemoryRegistry::default()).await
    }

    async fn with_registry(registry: MemoryRegistry) -> Bench {
        let balena = BalenaEmulator::start().await.expect("the emulator starts");
        balena.add_user_key("function-key");
        let fleet = balena.add_application("fleet");
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let device = balena.add_device(fleet, &uuid);
        balena.add_device_key(device, "device-key");
        let client = BalenaClient::new(
            reqwest::Client::new(),
            &balena.url(),
            Secret::new("function-key".to_string()),
            RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::with_attempt_timeout(Duration::from_secs(2))
            },
        );
        let registry = Arc::new(registry);
        let flow = Provisioner::new(client, registry.clone(), Duration::from_secs(8));
        Bench {
            balena,
            registry,
            flow,
            device,
            uuid: DeviceUuid::parse(&uuid).expect("a UUID"),
            key: Secret::new("device-key".to_string()),
        }
    }

    async fn send(&self, operation: Operation) -> Result<Outcome, ProvisionError> {
        let request = ProvisionRequest {
            operation,
            uuid: self.uuid.clone(),
            service: None,
        };
        self.flow
            .run(request, Caller::BalenaKey(self.key.clone()), "req-test")
            .await
    }

    async fn post(&self) -> Result<Outcome, ProvisionError> {
        self.send(Operation::Provision {
            rotate: false,
            csr: None,
        })
        .await
    }

    async fn rotate(&self) -> Result<Outcome, ProvisionError> {
        self.send(Operation::Provision {
            rotate: true,
            csr: None,
        })
        .await
    }

    async fn status(&self) -> Status {
        self.send(Operation::Status).await.expect("GET").status
    }

    fn vars(&self) -> BTreeMap<String, String> {
        self.balena.device_vars(self.device)
    }

    /// The device's lock tags' values, latest last.
    fn locks(&self) -> Vec<String> {
        let tags = self.balena.device_tags(self.device);
        let mut locks: Vec<(u64, String)> = tags
            .into_iter()
            .filter_map(|(k, v)| {
                let generation = k.strip_prefix("provision-lock-")?.parse().ok()?;
                Some((generation, v))
            })
            .collect();
        locks.sort();
        locks.into_iter().map(|(_, v)| v).collect()
    }

    /// The device's lock is free to the next request, without waiting.
    fn lock_free(&self) -> bool {
        self.locks().last().is_none_or(|v| {
            let value = lock::LockValue::read(v);
            value.released || value.goal.is_some()
        })
    }

    /// Everything consistent: the stored certificate is an active credential of the registry,
    /// and no other credential is there.
    fn assert_provisioned(&self) {
        let vars = self.vars();
        let credentials = self.registry.credentials();
        assert_eq!(credentials.len(), 1, "one credential: {credentials:?}");
        assert!(credentials[0].active);
        assert_eq!(
            vars.get(CERT).map(String::as_str),
            Some(
                crate::codec::base64_encode(
                    credentials[0].handle.get::<String>().unwrap().as_bytes()
                )
                .as_str()
            ),
            "the variables name the registered certificate"
        );
    }

    fn assert_nothing(&self) {
        assert!(self.vars().is_empty(), "no variables: {:?}", self.vars());
        assert!(self.registry.credentials().is_empty(), "no credentials");
        assert!(!self.registry.entry(), "no entry");
    }
}

fn balena_fault(method: &str, times: usize) -> Fault {
    Fault::new(500)
        .method(method)
        .resource("device_environment_variable")
        .times(times)
}

#[tokio::test]
async fn a_new_device_is_created_on_the_fast_path_and_its_lock_says_so() {
    let bench = Bench::start().await;
    let outcome = bench.post().await.expect("created");
    assert_eq!(outcome.status, Status::Created);
    assert_eq!(outcome.device_id.as_str(), format!("mem-{}", bench.uuid));
    bench.assert_provisioned();
    assert!(bench.vars().contains_key(KEY));
    let locks = bench.locks();
    assert_eq!(locks.len(), 1);
    assert!(
        locks[0].contains(" goal key ") && !locks[0].ends_with("released"),
        "the fast path's lock names its goal instead of a release: {locks:?}"
    );
    assert!(bench.lock_free());
    // The registry was not read: the fast path registers straight away.
    assert_eq!(bench.registry.calls(Step::Register), 1);

    assert_eq!(
        bench.post().await.unwrap().status,
        Status::AlreadyProvisioned
    );
    assert_eq!(bench.status().await, Status::Provisioned);
}

#[tokio::test]
async fn the_fast_path_undoes_everything_when_the_variables_cannot_be_stored() {
    let bench = Bench::start().await;
    bench.balena.inject_fault(balena_fault("POST", 1));
    let e = bench.post().await.expect_err("the store fails");
    assert!(e.to_string().contains("storing the variables"), "{e}");
    bench.assert_nothing();
    assert!(
        bench.locks().last().unwrap().ends_with("released"),
        "{:?}",
        bench.locks()
    );
    assert_eq!(bench.post().await.unwrap().status, Status::Created);
    bench.assert_provisioned();
}

#[tokio::test]
async fn the_fast_path_undoes_everything_when_activation_fails() {
    let bench = Bench::start().await;
    bench.registry.fail(Step::Activate, 1);
    let e = bench.post().await.expect_err("activation fails");
    assert!(e.to_string().contains("activating"), "{e}");
    bench.assert_nothing();
    assert!(bench.locks().last().unwrap().ends_with("released"));
    assert_eq!(bench.post().await.unwrap().status, Status::Created);
    bench.assert_provisioned();
}

#[tokio::test]
async fn a_failed_registration_leaves_nothing_and_releases_the_lock() {
    let bench = Bench::start().await;
    bench.registry.fail(Step::Register, 1);
    bench.post().await.expect_err("registration fails");
    bench.assert_nothing();
    assert!(bench.lock_free());
    assert_eq!(bench.post().await.unwrap().status, Status::Created);
}

#[tokio::test]
async fn an_entry_made_elsewhere_is_read_under_the_lock() {
    let bench = Bench::start().await;
    // An empty entry balenaCloud knows nothing of: the fast path registers as if there were
    // none, the registry refuses, and provisioning goes on under a lock taken afresh.
    bench.registry.held.lock().unwrap().entry = true;
    let outcome = bench.post().await.expect("created");
    assert_eq!(outcome.status, Status::Created);
    bench.assert_provisioned();
    assert_eq!(bench.registry.calls(Step::Register), 2);
    let locks = bench.locks();
    assert_eq!(locks.len(), 2, "{locks:?}");
    assert!(locks.iter().all(|l| l.ends_with("released")), "{locks:?}");
}

#[tokio::test]
async fn concurrent_posts_for_a_new_device_make_one_credential() {
    let bench = Bench::start().await;
    bench.balena.set_latency(Duration::from_millis(15));
    let (a, b) = tokio::join!(bench.post(), bench.post());
    let mut statuses = [a.unwrap().status, b.unwrap().status];
    statuses.sort_by_key(|s| s.as_str());
    assert_eq!(statuses, [Status::AlreadyProvisioned, Status::Created]);
    bench.assert_provisioned();
    assert!(bench.lock_free());
}

/// A private key stored for the device that is not its certificate's.
fn corrupt(bench: &Bench) -> String {
    let other = DeviceKey::generate().unwrap();
    let value = crate::codec::base64_encode(other.private_pem().expose().as_bytes());
    bench.balena.set_device_var(bench.device, KEY, &value);
    value
}

#[tokio::test]
async fn stored_variables_that_no_longer_match_are_repaired() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let old = bench.registry.credentials()[0].id.clone();
    corrupt(&bench);
    assert_eq!(bench.status().await, Status::Partial);
    assert_eq!(bench.post().await.unwrap().status, Status::Repaired);
    bench.assert_provisioned();
    assert_ne!(bench.registry.credentials()[0].id, old, "a new credential");
    assert!(bench.locks().last().unwrap().ends_with("released"));
}

#[tokio::test]
async fn a_repair_that_cannot_store_puts_everything_back() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let old = bench.registry.credentials();
    let bad = corrupt(&bench);
    let before = bench.vars();
    bench.balena.inject_fault(balena_fault("PATCH", 1));
    bench.post().await.expect_err("the store fails");
    assert_eq!(bench.vars(), before, "the variables as they were");
    assert_eq!(bench.vars()[KEY], bad);
    let now: Vec<String> = bench
        .registry
        .credentials()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(now, old.into_iter().map(|c| c.id).collect::<Vec<_>>());
    assert!(bench.lock_free());
}

#[tokio::test]
async fn rotation_replaces_the_credential_and_revokes_the_old_one_last() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let old = bench.registry.credentials()[0].id.clone();
    let outcome = bench
        .send(Operation::Provision {
            rotate: true,
            csr: None,
        })
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Rotated);
    bench.assert_provisioned();
    assert_ne!(bench.registry.credentials()[0].id, old);
}

/// The latest lock's value, read as the flow reads it.
fn latest_lock(bench: &Bench) -> lock::LockValue {
    lock::LockValue::read(bench.locks().last().expect("a lock"))
}

#[tokio::test]
async fn a_rotation_takes_its_lock_beside_the_registry_read_and_needs_no_release() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    for round in 0..2 {
        let old = bench.registry.credentials()[0].id.clone();
        let locks = bench.locks().len();
        let reads = bench.registry.reads();
        let outcome = bench.rotate().await.unwrap();
        assert_eq!(outcome.status, Status::Rotated, "round {round}");
        bench.assert_provisioned();
        assert_ne!(bench.registry.credentials()[0].id, old, "a new credential");
        assert_eq!(bench.locks().len(), locks + 1, "one lock taken");
        assert_eq!(bench.registry.reads(), reads + 1, "the registry read once");
        let lock = latest_lock(&bench);
        assert!(!lock.released, "no release: its goal says when it is done");
        let new_key = bench.registry.credentials()[0]
            .public_key
            .as_ref()
            .unwrap()
            .fingerprint();
        assert_eq!(
            lock.goal,
            Some((
                lock::Goal::Key {
                    key: new_key,
                    private: true,
                    sole: true
                },
                "device".into()
            )),
            "round {round}"
        );
    }
    assert_eq!(
        bench.post().await.unwrap().status,
        Status::AlreadyProvisioned
    );
}

#[tokio::test]
async fn a_rotation_waits_for_the_previous_one_to_retire_its_old_credential() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let first = bench.registry.credentials()[0].clone();
    bench.rotate().await.unwrap();
    // As if that rotation had not yet retired the first credential: its lock is not done.
    bench.registry.put_back(first.clone());
    let reads = bench.registry.reads();
    let waiting = bench.rotate();
    let retiring = async {
        // Once the rotation has read the registry beside its take, and once more waiting, the
        // previous holder retires the old credential.
        while bench.registry.reads() < reads + 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bench.registry.take_away(&first.id);
    };
    tokio::pin!(waiting);
    let outcome = tokio::select! {
        outcome = &mut waiting => outcome,
        () = retiring => waiting.await,
    };
    assert_eq!(outcome.unwrap().status, Status::Rotated);
    assert!(bench.registry.reads() >= reads + 2, "it waited");
    bench.assert_provisioned();
    assert!(!latest_lock(&bench).released);
}

#[tokio::test]
async fn a_rotation_whose_predecessor_never_finishes_is_busy_and_leaves_everything() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let first = bench.registry.credentials()[0].clone();
    bench.rotate().await.unwrap();
    bench.registry.put_back(first);
    let before = bench.vars();
    let ids = |bench: &Bench| -> Vec<String> {
        bench
            .registry
            .credentials()
            .into_iter()
            .map(|c| c.id)
            .collect()
    };
    let credentials = ids(&bench);
    let e = bench.rotate().await.expect_err("busy");
    assert!(matches!(e, ProvisionError::Busy(_)), "{e}");
    assert_eq!(bench.vars(), before, "the variables as they were");
    assert_eq!(ids(&bench), credentials, "no credential added or removed");
    assert!(latest_lock(&bench).released, "its own lock released");
}

#[tokio::test]
async fn concurrent_posts_rotations_and_deletes_end_consistent() {
    let bench = Bench::start().await;
    bench.balena.set_latency(Duration::from_millis(3));
    let bench = &bench;
    for round in 0..6 {
        let requests = (0..9).map(|n| async move {
            match n % 3 {
                0 => bench.post().await,
                1 => bench.rotate().await,
                _ => bench.send(Operation::Deprovision).await,
            }
        });
        for result in futures::future::join_all(requests).await {
            if let Err(e) = result {
                assert!(matches!(e, ProvisionError::Busy(_)), "round {round}: {e}");
            }
        }
        if bench.vars().is_empty() {
            bench.assert_nothing();
        } else {
            bench.assert_provisioned();
        }
        // Nothing left held: the next requests go straight through.
        let status = bench.rotate().await.unwrap().status;
        assert!(
            matches!(status, Status::Rotated | Status::Created),
            "round {round}: {status:?}"
        );
        bench.assert_provisioned();
    }
    assert_eq!(
        bench.send(Operation::Deprovision).await.unwrap().status,
        Status::Deleted
    );
    bench.assert_nothing();
}

#[tokio::test]
async fn a_rotation_whose_old_credential_cannot_be_revoked_keeps_it_named() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let before = bench.vars();
    let old = bench.registry.credentials()[0].id.clone();
    bench.registry.fail(Step::Revoke, 1);
    bench
        .send(Operation::Provision {
            rotate: true,
            csr: None,
        })
        .await
        .expect_err("the old credential stays");
    assert_eq!(bench.vars(), before, "the variables name the old one again");
    bench.assert_provisioned();
    assert_eq!(bench.registry.credentials()[0].id, old);
}

#[tokio::test]
async fn a_csr_whose_provisioning_fails_gets_the_stored_private_key_back() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let before = bench.vars();
    let key = DeviceKey::generate().unwrap();
    let csr = DeviceCsr::parse(&key.csr_pem(&bench.uuid).unwrap(), &bench.uuid).unwrap();
    bench.registry.fail(Step::Activate, 1);
    bench
        .send(Operation::Provision {
            rotate: false,
            csr: Some(csr),
        })
        .await
        .expect_err("activation fails");
    assert_eq!(
        bench.vars(),
        before,
        "the private key deleted for the CSR is back"
    );
    bench.assert_provisioned();

    let csr = DeviceCsr::parse(&key.csr_pem(&bench.uuid).unwrap(), &bench.uuid).unwrap();
    let outcome = bench
        .send(Operation::Provision {
            rotate: false,
            csr: Some(csr),
        })
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Repaired);
    assert!(!bench.vars().contains_key(KEY), "the device keeps its key");
    assert!(outcome.variables.contains(&KEY.to_string()));
}

#[tokio::test]
async fn delete_removes_everything_and_its_lock_says_so() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let outcome = bench.send(Operation::Deprovision).await.unwrap();
    assert_eq!(outcome.status, Status::Deleted);
    assert_eq!(outcome.variables, vec![CERT.to_string(), KEY.to_string()]);
    bench.assert_nothing();
    assert!(bench.locks().last().unwrap().contains(" goal gone "));
    assert!(bench.lock_free());
    let again = bench.send(Operation::Deprovision).await.unwrap();
    assert_eq!(again.status, Status::NotProvisioned);
    assert_eq!(bench.status().await, Status::NotProvisioned);
}

#[tokio::test]
async fn a_delete_whose_variables_stay_makes_the_credential_work_again() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let before = bench.vars();
    bench.balena.inject_fault(balena_fault("DELETE", 1));
    let e = bench.send(Operation::Deprovision).await.expect_err("fails");
    assert!(e.to_string().contains("deleting the variables"), "{e}");
    assert_eq!(bench.vars(), before);
    bench.assert_provisioned();
    assert!(bench.lock_free());
    assert_eq!(
        bench.send(Operation::Deprovision).await.unwrap().status,
        Status::Deleted
    );
    bench.assert_nothing();
}

#[tokio::test]
async fn a_delete_whose_credential_still_works_stores_the_variables_again() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let before = bench.vars();
    bench.registry.fail(Step::RemoveEntry, 1);
    bench
        .send(Operation::Deprovision)
        .await
        .expect_err("the entry stays");
    assert_eq!(bench.vars(), before, "the variables are back");
    bench.assert_provisioned();
    assert!(bench.lock_free());
}

#[tokio::test]
async fn delete_under_the_lock_puts_the_variables_back_when_revocation_fails() {
    let bench = Bench::start().await;
    bench.post().await.unwrap();
    let before = bench.vars();
    // Another request's lock, held for a moment more: DELETE waits for it and works under a
    // lock of its own instead of the fast path.
    let until = lock::now_ms() + 300;
    bench.balena.set_device_tag(
        bench.device,
        "provision-lock-2",
        &format!("other-holder until {until}"),
    );
    bench.registry.fail(Step::RemoveEntry, 1);
    bench
        .send(Operation::Deprovision)
        .await
        .expect_err("the entry stays");
    assert_eq!(bench.vars(), before);
    bench.assert_provisioned();
    assert!(bench.locks().last().unwrap().ends_with("released"));
}

/// Where the entry does not hold the credentials (AWS IoT: a thing, certificates attached to
/// it), a DELETE under the lock that finds a credential attached after it read the registry (the
/// request that held the lock before it, finishing) reads the entry again, revokes that one too,
/// and removes the entry.
#[tokio::test]
async fn a_delete_revokes_a_credential_attached_after_its_read() {
    let bench = Bench::with_registry(MemoryRegistry::separate()).await;
    bench.post().await.unwrap();
    let late = RegisteredCredential {
        id: "attached-late".into(),
        public_key: None,
        handle: crate::registry::Handle::new(String::new()),
        active: true,
        complete: true,
        foreign: None,
    };
    bench.registry.attach_before_next_removal(late);
    // Another request's lock, held for a moment more: DELETE waits for it and works under a
    // lock of its own.
    let until = lock::now_ms() + 300;
    bench.balena.set_device_tag(
        bench.device,
        "provision-lock-2",
        &format!("other-holder until {until}"),
    );
    let before = bench.registry.calls.lock().unwrap().len();
    let outcome = bench
        .send(Operation::Deprovision)
        .await
        .expect("the DELETE removes the late credential too");
    assert_eq!(outcome.status, Status::Deleted);
    bench.assert_nothing();
    assert_eq!(
        bench.registry.calls.lock().unwrap()[before..],
        [
            Step::Revoke,
            Step::RemoveEntry,
            Step::Revoke,
            Step::RemoveEntry
        ],
        "the credential read revoked, the removal refused, the late one revoked, removed"
    );
    assert!(bench.lock_free());
}

#[tokio::test]
async fn another_devices_key_changes_nothing() {
    let bench = Bench::start().await;
    let fleet = bench.balena.add_application("other");
    let other = bench
        .balena
        .add_device(fleet, &uuid::Uuid::new_v4().simple().to_string());
    bench.balena.add_device_key(other, "other-key");
    let request = ProvisionRequest {
        operation: Operation::Provision {
            rotate: false,
            csr: None,
        },
        uuid: bench.uuid.clone(),
        service: None,
    };
    let e = bench
        .flow
        .run(
            request,
            Caller::BalenaKey(Secret::new("other-key".to_string())),
            "r",
        )
        .await
        .expect_err("refused");
    assert!(matches!(e, ProvisionError::Forbidden(_)), "{e:?}");
    bench.assert_nothing();
    assert!(bench.registry.calls.lock().unwrap().is_empty());
    assert!(bench.locks().is_empty());
}

#[tokio::test]
async fn warm_up_opens_balena_and_reads_the_registry_and_writes_nothing() {
    let bench = Bench::start().await;
    let warm = bench.flow.warm(Duration::from_secs(2)).await;
    assert!(warm.complete(), "{warm}");
    let requests = bench.balena.requests();
    let pings = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path_and_query == "/ping")
        .count();
    // Two for a request's first round trip; the memory registry's two variables need no more.
    assert_eq!(pings, 2, "{requests:?}");
    assert!(
        requests.iter().all(|r| r.method == "GET"),
        "warm-up wrote to balenaCloud: {requests:?}"
    );
    // One registry read, for a device no UUID names; no registry write.
    let inspected = bench.registry.inspected.lock().unwrap().clone();
    assert_eq!(inspected.len(), 1, "{inspected:?}");
    assert_ne!(inspected[0], bench.flow.registry().device_id(&bench.uuid));
    assert!(bench.registry.calls.lock().unwrap().is_empty());
    assert!(bench.balena.device_tags(bench.device).is_empty());
    assert!(bench.balena.device_vars(bench.device).is_empty());
}

#[tokio::test]
async fn warm_up_never_waits_past_its_bound_on_an_upstream_that_does_not_answer() {
    // A balenaCloud that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let client = BalenaClient::new(
        reqwest::Client::new(),
        &url,
        Secret::new("function-key".to_string()),
        RetryPolicy::default(),
    );
    let registry = Arc::new(MemoryRegistry::default());
    let flow = Provisioner::new(client, registry.clone(), Duration::from_secs(8));
    let warm = flow.warm(Duration::from_millis(300)).await;
    held.abort();
    assert!(!warm.complete(), "{warm}");
    let balena = warm
        .balena
        .as_ref()
        .expect_err("balenaCloud never answered");
    assert!(balena.contains("in time"), "{balena}");
    // What could be done was: the registry read and the key pair.
    assert!(warm.registry.is_ok() && warm.crypto.is_ok(), "{warm}");
    assert!(
        warm.to_string().contains("left to the first request"),
        "{warm}"
    );
}
