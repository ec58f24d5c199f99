use super::*;

fn b64(json: &Value) -> String {
    base64_encode(json.to_string().as_bytes())
}

#[test]
fn service_account_is_checked_without_repeating_it() {
    let good = json!({"systemKey": "abc123", "token": "tok-secret", "url": "https://iot.clearblade.com", "project": "p"});
    let account = ServiceAccount::from_base64(&b64(&good)).unwrap();
    assert!(!format!("{account:?}").contains("tok-secret"));
    for (bad, says) in [
        ("%%%".to_string(), "not base64"),
        (base64_encode(b"not json"), "JSON"),
        (
            b64(&json!({"systemKey": "abc", "url": "https://x"})),
            "'token'",
        ),
        (
            b64(&json!({"systemKey": "abc", "token": "tok-secret", "url": "ftp://x"})),
            "'url'",
        ),
    ] {
        let err = ServiceAccount::from_base64(&bad).unwrap_err();
        assert_eq!(err.variable, "CB_SERVICE_ACCOUNT");
        assert!(err.problem.contains(says), "{}", err.problem);
        assert!(!err.to_string().contains("tok-secret"));
    }
}

#[test]
fn registry_names_are_checked() {
    assert!(RegistryPath::new("my-project", "us-central1", "balena-fleet").is_ok());
    assert_eq!(
        RegistryPath::new("My_Project", "us-central1", "r1x")
            .unwrap_err()
            .variable,
        "GCP_PROJECT_ID"
    );
    assert_eq!(
        RegistryPath::new("my-project", "us/central1", "r1x")
            .unwrap_err()
            .variable,
        "GCP_REGION"
    );
    assert_eq!(
        RegistryPath::new("my-project", "us-central1", "1reg")
            .unwrap_err()
            .variable,
        "CB_REGISTRY_ID"
    );
    assert_eq!(
        RegistryPath::new("my-project", "us-central1", "reg/../x")
            .unwrap_err()
            .variable,
        "CB_REGISTRY_ID"
    );
}

#[test]
fn credentials_expire_and_blocked_devices_have_none_usable() {
    let key = crate::credentials::DeviceKey::generate()
        .unwrap()
        .public_key_pem();
    let credential = |expiry: Option<&str>| DeviceCredential {
        public_key: Some(PublicKeyCredential {
            format: "ES256_PEM".into(),
            key: key.pem.clone(),
        }),
        expiration_time: expiry.map(str::to_owned),
    };
    let now = "2026-11-23T12:00:00";
    assert!(registered(&credential(None), false, now).unwrap().active);
    assert!(
        registered(&credential(Some("1970-01-01T00:00:00Z")), false, now)
            .unwrap()
            .active
    );
    assert!(
        registered(&credential(Some("2030-01-01T00:00:00Z")), false, now)
            .unwrap()
            .active
    );
    assert!(
        !registered(&credential(Some("2020-01-01T00:00:00Z")), false, now)
            .unwrap()
            .active
    );
    assert!(!registered(&credential(None), true, now).unwrap().active);
    let garbage = DeviceCredential {
        public_key: Some(PublicKeyCredential {
            format: "ES256_PEM".into(),
            key: "nope".into(),
        }),
        expiration_time: None,
    };
    assert!(!registered(&garbage, false, now).unwrap().active);
}
