//! The clouds this build serves, one row each: what a host needs to know of a cloud without
//! knowing the cloud. `provision-cloudrun` chooses its registry by this table
//! (`PROVISION_CLOUD`), every host's `--help` lists a cloud's settings from it, and an unknown
//! name is answered with the names it holds. A registry joins the table by implementing
//! [`FromEnv`] (in its `settings.rs`) and adding its row to [`CLOUDS`].

use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Cloud, FromEnv, Registry};
use crate::config::{ConfigError, Setting};

/// A registry being read from the environment, as the flow takes it.
pub type Loading = BoxFuture<'static, Result<Arc<dyn Registry>, ConfigError>>;

/// One cloud of the table.
pub struct CloudRow {
    pub cloud: Cloud,
    pub product: &'static str,
    pub settings: &'static [Setting],
    /// [`FromEnv::from_env`], behind the trait object the flow takes.
    pub from_env: fn() -> Loading,
}

impl CloudRow {
    /// The row of registry `R`.
    pub const fn of<R: FromEnv>() -> Self {
        CloudRow {
            cloud: R::CLOUD,
            product: R::PRODUCT,
            settings: R::SETTINGS,
            from_env: from_env::<R>,
        }
    }

    /// The name `PROVISION_CLOUD` takes.
    pub fn name(&self) -> &'static str {
        self.cloud.as_str()
    }
}

fn from_env<R: FromEnv>() -> Loading {
    Box::pin(async { Ok(Arc::new(R::from_env().await?) as Arc<dyn Registry>) })
}

/// Every cloud this build serves, in the order `--help` lists them (the first is ClearBlade,
/// `provision-cloudrun`'s default).
pub const CLOUDS: &[CloudRow] = &[
    #[cfg(feature = "gcp")]
    CloudRow::of::<super::clearblade::ClearBladeRegistry>(),
    #[cfg(feature = "aws")]
    CloudRow::of::<super::aws::AwsIotRegistry>(),
    #[cfg(feature = "azure")]
    CloudRow::of::<super::azure::IotHubRegistry>(),
];

/// The row of `cloud`, when this build serves it.
pub fn row(cloud: Cloud) -> Option<&'static CloudRow> {
    CLOUDS.iter().find(|row| row.cloud == cloud)
}

/// The names of the clouds this build serves: `gcp, aws, azure`.
pub fn names() -> String {
    CLOUDS
        .iter()
        .map(CloudRow::name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cloud `variable` names (`PROVISION_CLOUD`), `default` when it is unset or blank; an
/// error naming the variable and the clouds of this build when this build does not serve it.
pub fn choose(
    variable: &'static str,
    value: Option<&str>,
    default: Cloud,
) -> Result<&'static CloudRow, ConfigError> {
    let name = value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(default.as_str());
    name.parse::<Cloud>().ok().and_then(row).ok_or_else(|| {
        ConfigError::new(
            variable,
            format!("is '{name}': this build serves {}", names()),
        )
    })
}

impl Cloud {
    /// Every cloud, whether or not this build serves it.
    pub const ALL: [Cloud; 3] = {
        // A new cloud stops the build here until it is in the list.
        match Cloud::Aws {
            Cloud::Aws | Cloud::Azure | Cloud::Gcp => {}
        }
        [Cloud::Aws, Cloud::Azure, Cloud::Gcp]
    };
}

/// A cloud by its name (`aws`, `azure`, `gcp`), whether or not this build serves it.
impl FromStr for Cloud {
    type Err = UnknownCloud;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Cloud::ALL
            .into_iter()
            .find(|cloud| cloud.as_str() == name)
            .ok_or(UnknownCloud)
    }
}

/// A name that is no cloud's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a cloud: use aws, azure or gcp")]
pub struct UnknownCloud;

/// Its name, padded as the format asks (`{:<5}` lines tables up).
impl std::fmt::Display for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back() {
        for cloud in Cloud::ALL {
            assert_eq!(cloud.as_str().parse::<Cloud>(), Ok(cloud));
            assert_eq!(cloud.to_string(), cloud.as_str());
        }
        assert_eq!("GCP".parse::<Cloud>(), Err(UnknownCloud));
    }

    #[test]
    fn the_table_answers_every_cloud_of_the_build() {
        for entry in CLOUDS {
            assert_eq!(row(entry.cloud).map(|r| r.cloud), Some(entry.cloud));
            assert!(
                !entry.settings.is_empty(),
                "{} reads no setting",
                entry.name()
            );
            assert!(names().contains(entry.name()));
        }
        assert_eq!(CLOUDS.len(), names().split(", ").count());
    }

    #[test]
    fn an_unknown_cloud_names_the_variable_and_the_clouds() {
        let error = choose("PROVISION_CLOUD", Some("ibm"), Cloud::Gcp)
            .err()
            .expect("ibm is no cloud");
        assert_eq!(error.variable, "PROVISION_CLOUD");
        assert_eq!(
            error.problem,
            format!("is 'ibm': this build serves {}", names())
        );
        #[cfg(feature = "gcp")]
        assert_eq!(
            choose("PROVISION_CLOUD", Some(" "), Cloud::Gcp)
                .map(|r| r.cloud)
                .ok(),
            Some(Cloud::Gcp)
        );
        #[cfg(feature = "aws")]
        assert_eq!(
            choose("PROVISION_CLOUD", Some("aws"), Cloud::Gcp)
                .map(|r| r.cloud)
                .ok(),
            Some(Cloud::Aws)
        );
    }
}
