//! Identifiers that can only hold valid values: once a request is parsed, nothing downstream
//! has to wonder whether a UUID or a service name is safe to put into a URL or an OData filter.

use std::fmt;

/// A balena device UUID: 32 or 62 lowercase hexadecimal characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceUuid(String);

impl DeviceUuid {
    pub fn parse(value: &str) -> Result<Self, String> {
        let len = value.len();
        if len != 32 && len != 62 {
            return Err(format!(
                "must be 32 or 62 lowercase hex characters, got {len} characters"
            ));
        }
        if let Some(bad) = value.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(format!("must be lowercase hex, found {:?}", bad));
        }
        Ok(DeviceUuid(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first seven characters, as balena shows a device in its dashboard.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

impl fmt::Display for DeviceUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service name as docker-compose and balena accept it: 1 to 63 characters of ASCII
/// letters, digits, `_`, `.`, `-`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() || value.len() > 63 {
            return Err(format!(
                "must be 1 to 63 characters, got {}",
                value.chars().count()
            ));
        }
        let mut chars = value.chars();
        let first = chars.next().unwrap_or(' ');
        if !first.is_ascii_alphanumeric() {
            return Err("must start with a letter or a digit".into());
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "may hold only letters, digits, '_', '.' and '-', found {:?}",
                bad
            ));
        }
        Ok(ServiceName(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The registry's id for a device (AWS thing name, IoT Hub or ClearBlade device id), as its
/// registry works it out from the UUID (see `Registry::device_id`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct RegistryDeviceId(String);

impl RegistryDeviceId {
    /// Only a registry makes one, from a device's UUID.
    pub fn new(id: String) -> Self {
        RegistryDeviceId(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistryDeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// balenaCloud's numeric id of a device (the `device` of its variables and tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BalenaDeviceId(pub i64);

impl fmt::Display for BalenaDeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        assert!(DeviceUuid::parse("7cf02a69e4d34c9da573914963cf54fd").is_ok());
        assert!(DeviceUuid::parse(&"a".repeat(62)).is_ok());
        for bad in [
            "",
            "7CF02A69E4D34C9DA573914963CF54FD",
            "7cf02a69e4d34c9da573914963cf54f",
            "7cf02a69-e4d3-4c9d-a573-914963cf54fd",
            "7cf02a69e4d34c9da573914963cf54f'",
            "7cf02a69e4d34c9da573914963cf54fg",
            "ééééééééééééééé7cf02a",
        ] {
            assert!(DeviceUuid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names() {
        for good in ["main", "cloud-relay", "a", "svc_1.x"] {
            assert!(ServiceName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a'b", "x/y", "é", &"a".repeat(64)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad}");
        }
    }
}
