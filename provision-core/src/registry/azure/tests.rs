use super::*;

const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5";

#[test]
fn a_service_connection_string_parses() {
    let cs = ConnectionString::parse(&format!(
        "HostName=hub.azure-devices.net;SharedAccessKeyName=registryReadWrite;SharedAccessKey={KEY}"
    ))
    .unwrap();
    assert_eq!(cs.host, "hub.azure-devices.net");
    assert_eq!(cs.policy, "registryReadWrite");
    assert!(!format!("{cs:?}").contains(KEY));
}

#[test]
fn a_device_connection_string_is_refused_with_the_reason() {
    let err = ConnectionString::parse(&format!(
        "HostName=hub.azure-devices.net;DeviceId=dev1;SharedAccessKey={KEY}"
    ))
    .unwrap_err();
    assert_eq!(err.variable, "CONNECTION_STRING");
    assert!(
        err.to_string().contains("device connection string"),
        "{err}"
    );
    assert!(!err.to_string().contains(KEY));
}

#[test]
fn incomplete_connection_strings_say_what_is_missing() {
    for (value, missing) in [
        ("SharedAccessKeyName=p;SharedAccessKey=a2V5", "HostName"),
        ("HostName=h;SharedAccessKey=a2V5", "SharedAccessKeyName"),
        ("HostName=h;SharedAccessKeyName=p", "SharedAccessKey"),
        (
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=%%%",
            "SharedAccessKey",
        ),
        ("garbage", "Name=value"),
    ] {
        let err = ConnectionString::parse(value).unwrap_err();
        assert!(err.to_string().contains(missing), "{value}: {err}");
    }
}

#[test]
fn sas_token_shape() {
    let cs = ConnectionString::parse(&format!(
        "HostName=Hub.azure-devices.net;SharedAccessKeyName=p;SharedAccessKey={KEY}"
    ))
    .unwrap();
    let token = cs.sas_token(1_800_000_000);
    let t = token.expose();
    assert!(
        t.starts_with("SharedAccessSignature sr=hub.azure-devices.net&sig="),
        "{t}"
    );
    assert!(t.ends_with("&se=1800000000&skn=p"), "{t}");
    assert_eq!(
        cs.sas_token(1_800_000_000),
        token,
        "deterministic for one expiry"
    );
}
