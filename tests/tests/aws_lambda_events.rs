//! The Lambda host in-process with every event shape it serves: API Gateway REST (v1), HTTP
//! API (v2, the function URL shape too) and ALB. Same core, same answers.

use std::sync::Arc;

use provision_core::registry::aws::AwsIotRegistry;
use provision_testkit::aws;
use provision_testkit::checks::{Target, assert_aws_gone, assert_aws_provisioned};
use provision_testkit::events::Call;
use provision_testkit::world::AwsWorld;
use serde_json::{Value, json};

async fn in_process_service(world: &AwsWorld) -> provision_core::Service {
    let settings = provision_core::Settings::from_lookup(|name| match name {
        "BALENA_API_KEY" => Some(world.secrets.function_key.clone()),
        "BALENA_API_URL" => Some(world.balena.url()),
        "PROVISION_OPERATOR_TOKEN" => Some(world.secrets.operator_token.clone()),
        _ => None,
    })
    .unwrap();
    let registry = AwsIotRegistry::new(world.moto.client().await, aws::POLICY.to_string());
    provision_core::build(&settings, Arc::new(registry))
}

async fn send(service: &provision_core::Service, event: Value) -> (u16, Value, Option<String>) {
    let request =
        lambda_http::request::from_str(&event.to_string()).expect("lambda_http reads the event");
    let response = provision_lambda::serve(service, request).await;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("expected a text body, got {other:?}"),
    };
    (status, body, content_type)
}

#[tokio::test]
async fn every_event_shape_serves_the_same_contract() {
    let world = AwsWorld::start().await.unwrap();
    let service = in_process_service(&world).await;
    type Shape = fn(&Call) -> Value;
    let shapes: [(&str, Shape); 3] = [
        ("API Gateway v1", Call::api_gateway_v1_event),
        ("HTTP API v2", Call::function_url_event),
        ("ALB", Call::alb_event),
    ];

    for (name, shape) in shapes {
        let device = world.add_device().await;
        let post = Call::post(json!({"uuid": device.uuid, "balena_service": "cloud-relay"}))
            .bearer(&device.key);
        let (status, body, content_type) = send(&service, shape(&post)).await;
        assert_eq!(status, 201, "{name}: {body}");
        assert_eq!(body["status"], "created", "{name}");
        assert_eq!(content_type.as_deref(), Some("application/json"), "{name}");
        assert_aws_provisioned(&world, &device, Target::Service, false).await;

        let get = Call::get(&format!("uuid={}&balena_service=cloud-relay", device.uuid))
            .bearer(&device.key);
        let (status, body, _) = send(&service, shape(&get)).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("provisioned")),
            "{name}: {body}"
        );

        let delete = Call::delete(json!({"uuid": device.uuid, "balena_service": "cloud-relay"}))
            .bearer(&world.secrets.operator_token);
        let (status, body, _) = send(&service, shape(&delete)).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("deleted")),
            "{name}: {body}"
        );
        assert_aws_gone(&world, &device, Target::Service).await;

        let (status, body, _) = send(&service, shape(&Call::new("GET", "/healthz"))).await;
        assert_eq!((status, body), (200, json!({"status": "ok"})), "{name}");

        let (status, body, _) = send(
            &service,
            shape(&Call::new("PUT", "/provision").json(json!({"uuid": device.uuid}))),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (405, Some("provision.request.bad-method")),
            "{name}"
        );
        let (status, body, _) =
            send(&service, shape(&Call::post(json!({"uuid": device.uuid})))).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("provision.auth.missing")),
            "{name}"
        );
    }
    world.stop().await;
}
