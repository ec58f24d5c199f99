//! The Lambda Runtime API emulator, driven by a test that plays the function: it polls
//! `/runtime/invocation/next` over HTTP and posts answers, as `lambda_runtime` 1.x does.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use provision_emulators::lambda_runtime::{InvocationOutcome, LambdaRuntimeEmulator};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A fake function instance talking to the emulator.
struct FakeFunction {
    http: reqwest::Client,
    base: String,
}

/// What `GET /runtime/invocation/next` handed out.
#[derive(Debug)]
struct NextEvent {
    request_id: String,
    deadline_ms: u128,
    function_arn: String,
    trace_id: String,
    event: Value,
}

impl FakeFunction {
    fn new(emulator: &LambdaRuntimeEmulator) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("http://{}/2018-06-01/runtime", emulator.runtime_api()),
        }
    }

    async fn next(&self) -> NextEvent {
        let response = self
            .http
            .get(format!("{}/invocation/next", self.base))
            .send()
            .await
            .expect("GET next");
        assert_eq!(response.status(), 200);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .unwrap_or_else(|| panic!("missing {name}"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        let request_id = header("Lambda-Runtime-Aws-Request-Id");
        let deadline_ms = header("Lambda-Runtime-Deadline-Ms")
            .parse()
            .expect("deadline is u64 ms");
        let function_arn = header("Lambda-Runtime-Invoked-Function-Arn");
        let trace_id = header("Lambda-Runtime-Trace-Id");
        let event = response.json().await.expect("event is JSON");
        NextEvent {
            request_id,
            deadline_ms,
            function_arn,
            trace_id,
            event,
        }
    }

    async fn post(&self, path: &str, body: Value, error_type: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/{path}", self.base)).json(&body);
        if let Some(error_type) = error_type {
            request = request.header("Lambda-Runtime-Function-Error-Type", error_type);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn respond(&self, request_id: &str, body: Value) -> (u16, Value) {
        self.post(&format!("invocation/{request_id}/response"), body, None)
            .await
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[tokio::test]
async fn function_env_has_everything_lambda_runtime_reads() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    let api = emulator.runtime_api();
    assert!(api.starts_with("127.0.0.1:"), "{api}");
    assert!(!api.contains("://"));

    let env: std::collections::HashMap<_, _> =
        emulator.function_env("provision").into_iter().collect();
    assert_eq!(env["AWS_LAMBDA_RUNTIME_API"], api);
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "provision");
    env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
        .parse::<i32>()
        .expect("memory size is i32");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/provision");
    assert!(env["AWS_LAMBDA_LOG_STREAM_NAME"].contains("/[$LATEST]"));
    emulator.shutdown().await;
}

#[tokio::test]
async fn next_then_response() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    emulator.function_env("provision");
    let function = FakeFunction::new(&emulator);
    let before = unix_ms();

    let poller = async {
        let next = function.next().await;
        assert_eq!(next.event, json!({"path": "/v1/provision", "n": 1}));
        assert!(
            next.deadline_ms >= before + 9_000,
            "deadline {} vs now {before}",
            next.deadline_ms
        );
        assert!(next.deadline_ms <= unix_ms() + 10_000);
        assert_eq!(
            next.function_arn,
            "arn:aws:lambda:us-east-1:123456789012:function:provision"
        );
        assert!(next.trace_id.starts_with("Root=1-"), "{}", next.trace_id);
        let answer = function
            .respond(&next.request_id, json!({"statusCode": 200, "body": "ok"}))
            .await;
        assert_eq!(answer, (202, json!({"status": "OK"})));
        next.request_id
    };
    let (invocation, request_id) = tokio::join!(
        emulator.invoke(json!({"path": "/v1/provision", "n": 1}), TIMEOUT),
        poller
    );
    let invocation = invocation.unwrap();

    assert_eq!(invocation.request_id, request_id);
    assert_eq!(
        invocation.outcome,
        InvocationOutcome::Response(json!({"statusCode": 200, "body": "ok"}))
    );
    assert!(invocation.duration < TIMEOUT);
    assert_eq!(emulator.invocations_served(), 1);
    assert_eq!(emulator.invocations_delivered(), 1);

    // Answering twice is refused, as is an unknown id.
    assert_eq!(function.respond(&request_id, json!(1)).await.0, 400);
    let (status, body) = function.respond("not-a-request", json!(1)).await;
    assert_eq!(status, 400);
    assert_eq!(body["errorType"], "InvalidRequestID");
    assert_eq!(emulator.invocations_served(), 1);

    let requests = emulator.requests();
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/2018-06-01/runtime/invocation/next");
    assert_eq!(requests[1].status, 202);
    emulator.shutdown().await;
}

#[tokio::test]
async fn next_then_error() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    let function = FakeFunction::new(&emulator);

    let poller = async {
        let next = function.next().await;
        let error = json!({"errorType": "&alloc::boxed::Box<dyn Error>", "errorMessage": "boom"});
        let answer = function
            .post(
                &format!("invocation/{}/error", next.request_id),
                error,
                Some("unhandled"),
            )
            .await;
        assert_eq!(answer, (202, json!({"status": "OK"})));
    };
    let (invocation, ()) = tokio::join!(emulator.invoke(json!({"n": 2}), TIMEOUT), poller);

    match invocation.unwrap().outcome {
        InvocationOutcome::Error(error) => {
            assert_eq!(error["errorMessage"], "boom");
            assert_eq!(error["errorType"], "&alloc::boxed::Box<dyn Error>");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(emulator.invocations_served(), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn init_error_fails_a_waiting_invoke_promptly_and_is_recorded() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    let function = FakeFunction::new(&emulator);
    assert_eq!(emulator.init_error(), None);

    let failing_init = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let error =
            json!({"errorType": "Runtime.InitError", "errorMessage": "missing PROVISION_TABLE"});
        let answer = function
            .post("init/error", error, Some("Runtime.InitError"))
            .await;
        assert_eq!(answer, (202, json!({"status": "OK"})));
    };
    let started = std::time::Instant::now();
    let (invocation, ()) = tokio::join!(
        emulator.invoke(json!({}), Duration::from_secs(30)),
        failing_init
    );
    let error = invocation.expect_err("init error must fail the invocation");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not prompt: {:?}",
        started.elapsed()
    );
    assert!(
        error.to_string().contains("missing PROVISION_TABLE"),
        "{error}"
    );
    assert_eq!(
        emulator.init_error().unwrap()["errorMessage"],
        "missing PROVISION_TABLE"
    );

    // Later invocations fail at once, until the init error is cleared.
    let error = emulator
        .invoke(json!({}), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("initialise"), "{error}");
    emulator.clear_init_error();
    let poller = async {
        let next = function.next().await;
        function.respond(&next.request_id, json!("fine")).await
    };
    let (invocation, _) = tokio::join!(emulator.invoke(json!({}), TIMEOUT), poller);
    assert_eq!(
        invocation.unwrap().outcome,
        InvocationOutcome::Response(json!("fine"))
    );
    assert_eq!(emulator.invocations_served(), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn concurrent_pollers_each_get_a_distinct_invocation() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();

    // Two function instances, each handling one invocation at a time and echoing the event.
    let instance = |emulator: &LambdaRuntimeEmulator| {
        let function = FakeFunction::new(emulator);
        tokio::spawn(async move {
            let next = function.next().await;
            // Hold it a little, so both invocations are in flight at the same time.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let answer = function
                .respond(&next.request_id, json!({"echo": next.event}))
                .await;
            assert_eq!(answer.0, 202);
            next.request_id
        })
    };
    let first = instance(&emulator);
    let second = instance(&emulator);
    tokio::time::sleep(Duration::from_millis(50)).await; // both are long-polling now

    let (a, b) = tokio::join!(
        emulator.invoke(json!({"n": "a"}), TIMEOUT),
        emulator.invoke(json!({"n": "b"}), TIMEOUT)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.outcome,
        InvocationOutcome::Response(json!({"echo": {"n": "a"}}))
    );
    assert_eq!(
        b.outcome,
        InvocationOutcome::Response(json!({"echo": {"n": "b"}}))
    );

    let handled: HashSet<String> = [first.await.unwrap(), second.await.unwrap()].into();
    assert_eq!(handled, HashSet::from([a.request_id, b.request_id]));
    assert_eq!(emulator.invocations_served(), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_invokes_from_spawned_tasks() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let function = FakeFunction::new(&emulator);
        instances.push(tokio::spawn(async move {
            loop {
                let next = function.next().await;
                function.respond(&next.request_id, next.event).await;
            }
        }));
    }
    let invokes: Vec<_> = (0..20)
        .map(|n| {
            let emulator = emulator.clone();
            tokio::spawn(async move { emulator.invoke(json!({"n": n}), TIMEOUT).await })
        })
        .collect();
    for (n, invoke) in invokes.into_iter().enumerate() {
        let invocation = invoke.await.unwrap().unwrap();
        assert_eq!(
            invocation.outcome,
            InvocationOutcome::Response(json!({"n": n}))
        );
    }
    assert_eq!(emulator.invocations_served(), 20);
    for instance in instances {
        instance.abort();
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn invoke_times_out_when_nobody_polls() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    let started = std::time::Instant::now();
    let error = emulator
        .invoke(json!({"lonely": true}), Duration::from_millis(300))
        .await
        .expect_err("nobody polls");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(error.to_string().contains("timed out"), "{error}");

    // The withdrawn invocation is not handed to a poller that comes later.
    let function = FakeFunction::new(&emulator);
    let poller = async {
        let next = function.next().await;
        assert_eq!(next.event, json!({"fresh": true}));
        function.respond(&next.request_id, json!("done")).await
    };
    let (invocation, _) = tokio::join!(emulator.invoke(json!({"fresh": true}), TIMEOUT), poller);
    assert_eq!(
        invocation.unwrap().outcome,
        InvocationOutcome::Response(json!("done"))
    );
    assert_eq!(emulator.invocations_delivered(), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn invoke_times_out_when_the_function_does_not_answer_and_a_late_answer_is_refused() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    let function = FakeFunction::new(&emulator);
    let poller = async {
        let next = function.next().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        function
            .respond(&next.request_id, json!("too late"))
            .await
            .0
    };
    let (invocation, late) = tokio::join!(
        emulator.invoke(json!({}), Duration::from_millis(200)),
        poller
    );
    let error = invocation.unwrap_err();
    assert!(error.to_string().contains("did not answer"), "{error}");
    assert_eq!(late, 400);
    assert_eq!(emulator.invocations_served(), 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_pending_long_polls() {
    let emulator = LambdaRuntimeEmulator::start().await.unwrap();
    let base = format!("http://{}/2018-06-01/runtime", emulator.runtime_api());
    let poll = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("{base}/invocation/next"))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    emulator.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let result = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("the long-poll must end")
        .unwrap();
    assert!(
        result.is_err(),
        "the poller must see a connection error, got {result:?}"
    );
}
