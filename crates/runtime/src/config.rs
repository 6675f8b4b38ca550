//! Configuration: defaults from the type, then an optional TOML file, then
//! environment variables (`<PREFIX>KEY`, nested keys joined with `__`).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// Load `T` for a service. `env_prefix` is e.g. `"MAILFLEET_STORAGE_"`, so
/// `MAILFLEET_STORAGE_DATABASE_URL` overrides `database_url`.
pub fn load<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(Env::prefixed(env_prefix).split("__"));
    figment.extract().map_err(|e| ConfigError(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Sample {
        listen: String,
        limit: u32,
    }
    impl Default for Sample {
        fn default() -> Self {
            Sample { listen: "127.0.0.1:1".into(), limit: 5 }
        }
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "limit = 9\nlisten = \"127.0.0.1:2\"\n").unwrap();
        let from_file: Sample = load(Some(&path), "MF_RUNTIME_TEST_NONE_").unwrap();
        assert_eq!(from_file, Sample { listen: "127.0.0.1:2".into(), limit: 9 });

        // SAFETY: the variable name is unique to this test.
        unsafe { std::env::set_var("MF_RUNTIME_TEST_A_LIMIT", "11") };
        let from_env: Sample = load(Some(&path), "MF_RUNTIME_TEST_A_").unwrap();
        assert_eq!(from_env.limit, 11);
        assert_eq!(from_env.listen, "127.0.0.1:2");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<Sample>(Some(Path::new("/nonexistent/x.toml")), "MF_X_");
        assert!(err.is_err());
    }
}
