//! Configuration: defaults from the type, then an optional TOML file, then
//! environment variables (`<PREFIX>KEY`, nested keys joined with `__`).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Uncased, UncasedStr, Value};
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

/// [`load`] for a service that listens for clients: keys renamed when the
/// services got one set of connection settings (`listener::RENAMED`) are
/// still read under their old names, from the file and the environment,
/// with a warning naming the new key.
pub fn load_service<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_renamed(file, env_prefix, crate::listener::RENAMED)
}

fn load_renamed<T>(file: Option<&Path>, env_prefix: &str, renamed: &'static [(&str, &str)]) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let err = |e| ConfigError(Box::new(e));
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        let mut dict: Dict = Figment::from(Toml::file_exact(path)).extract().map_err(err)?;
        // Only a file with old names goes through the translated copy (its
        // errors then name no file); any other is read as it is.
        figment = if rename_keys(&mut dict, renamed) {
            figment.merge(Serialized::defaults(dict))
        } else {
            figment.merge(Toml::file_exact(path))
        };
    }
    let env = Env::prefixed(env_prefix).split("__").map(move |key: &UncasedStr| -> Uncased<'_> {
        match renamed.iter().find(|(old, _)| key.as_str().eq_ignore_ascii_case(old)) {
            Some((old, new)) => {
                tracing::warn!(old, new, "configuration key renamed; please use the new name");
                Uncased::from_owned(new.to_string())
            }
            None => Uncased::from_borrowed(key.as_str()),
        }
    });
    figment.merge(env).extract().map_err(err)
}

/// Move every old dotted key in `dict` to its new one; whether any moved.
fn rename_keys(dict: &mut Dict, renamed: &[(&str, &str)]) -> bool {
    let mut any = false;
    for (old, new) in renamed {
        if let Some(value) = take_path(dict, old) {
            tracing::warn!(old, new, "configuration key renamed; please use the new name");
            put_path(dict, new, value);
            any = true;
        }
    }
    any
}

fn take_path(dict: &mut Dict, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => dict.remove(path),
        Some((head, rest)) => match dict.get_mut(head)? {
            Value::Dict(_, inner) => take_path(inner, rest),
            _ => None,
        },
    }
}

fn put_path(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = dict.entry(head.to_string()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                put_path(inner, rest, value);
            }
        }
    }
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
