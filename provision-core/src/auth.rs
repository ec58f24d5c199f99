//! Who is calling: the device itself (its own balena API key), the operator (a shared token,
//! compared in constant time), or nobody (only where the operator allows it).

use http::{HeaderMap, header};

use crate::error::ProvisionError;
use crate::secret::{Secret, constant_time_eq};

/// How callers may prove themselves, from the function's configuration.
#[derive(Clone, Debug, Default)]
pub struct AuthPolicy {
    pub operator_token: Option<Secret>,
    pub allow_unauthenticated: bool,
    /// `PROVISION_ACCEPT_USER_KEYS`: a user's (or fleet's) key that can see the device may act
    /// on it. Off by default: seeing a device is not being it (a read-only fleet member sees
    /// every device).
    pub accept_user_keys: bool,
}

#[derive(Debug)]
pub enum Caller {
    /// A balena API key: the caller is whoever balenaCloud's `whoami` says holds it; only the
    /// device's own key may act on it (or, where the operator opts in, a user key that sees it).
    BalenaKey(Secret),
    /// The operator token matched.
    Operator,
    /// No credentials, and the operator allows that: it may only get a device provisioned that
    /// is not yet (or repaired), with credentials the function makes (`api` enforces it).
    Anonymous,
}

/// Longest bearer token taken; balena keys and operator tokens are far shorter.
const MAX_TOKEN: usize = 4096;

/// Reads the `Authorization` header. This decides nothing about the device yet: a balena key
/// is only proven by asking balenaCloud what it can see.
pub fn identify(headers: &HeaderMap, policy: &AuthPolicy) -> Result<Caller, ProvisionError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return if policy.allow_unauthenticated {
            Ok(Caller::Anonymous)
        } else {
            Err(ProvisionError::AuthMissing)
        };
    };
    if values.next().is_some() {
        return Err(ProvisionError::AuthInvalid(
            "more than one Authorization header".into(),
        ));
    }
    let value = value.to_str().map_err(|_| {
        ProvisionError::AuthInvalid("the Authorization header is not visible ASCII".into())
    })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ProvisionError::AuthInvalid(
            "use 'Authorization: Bearer <token>'".into(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ProvisionError::AuthInvalid(
            "the bearer token is empty".into(),
        ));
    }
    if token.len() > MAX_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProvisionError::AuthInvalid(
            "the bearer token is not a usable token".into(),
        ));
    }
    if let Some(operator) = &policy.operator_token
        && constant_time_eq(token, operator.expose())
    {
        return Ok(Caller::Operator);
    }
    Ok(Caller::BalenaKey(Secret::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for a in auth {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    fn policy() -> AuthPolicy {
        AuthPolicy {
            operator_token: Some(Secret::new("operator-token-0123456789")),
            allow_unauthenticated: false,
            accept_user_keys: false,
        }
    }

    #[test]
    fn shapes() {
        assert!(matches!(
            identify(&headers(&[]), &policy()),
            Err(ProvisionError::AuthMissing)
        ));
        let open = AuthPolicy {
            allow_unauthenticated: true,
            ..policy()
        };
        assert!(matches!(
            identify(&headers(&[]), &open),
            Ok(Caller::Anonymous)
        ));
        assert!(matches!(
            identify(&headers(&["Bearer operator-token-0123456789"]), &policy()),
            Ok(Caller::Operator)
        ));
        assert!(matches!(
            identify(
                &headers(&["bearer   operator-token-0123456789 "]),
                &policy()
            ),
            Ok(Caller::Operator)
        ));
        assert!(matches!(
            identify(&headers(&["Bearer devicekey"]), &policy()),
            Ok(Caller::BalenaKey(_))
        ));
        for bad in [
            &["Basic abc"][..],
            &["Bearer"],
            &["Bearer "],
            &["Bearer a b"],
            &["Bearer x", "Bearer y"],
            &["Token abc"],
        ] {
            assert!(
                matches!(
                    identify(&headers(bad), &policy()),
                    Err(ProvisionError::AuthInvalid(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn operator_prefix_is_not_operator() {
        assert!(matches!(
            identify(&headers(&["Bearer operator-token-012345678"]), &policy()),
            Ok(Caller::BalenaKey(_))
        ));
    }
}
