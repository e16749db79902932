//! An environment provider that keeps scalar values verbatim.
//!
//! figment's [`Env`] parses every value as TOML-ish data, so a password `007` becomes the
//! integer 7 and can no longer be read as a string. [`VerbatimEnv`] keeps numbers and booleans
//! as the strings they were; [`super::load`] extracts lossily, so numeric and boolean settings
//! still read `"5"` or `"true"` correctly. Arrays and tables (`[1, 2]`) are still parsed.

use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

/// Wraps an [`Env`] (with its prefix, key mapping and profile) and reports it as its own.
pub(super) struct VerbatimEnv(pub(super) Env);

impl Provider for VerbatimEnv {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let value = match raw.parse::<Value>() {
                Ok(Value::Num(..) | Value::Bool(..)) | Err(_) => Value::from(raw),
                Ok(parsed) => parsed,
            };
            let path: Vec<&str> = key.as_str().split('.').collect();
            insert(&mut dict, &path, value);
        }
        Ok(self.0.profile.collect(dict))
    }
}

/// Sets `path` in `dict` to `value`, creating (or replacing non-table) parents.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [key] => {
            dict.insert((*key).to_owned(), value);
        }
        [head, rest @ ..] => {
            let entry = dict
                .entry((*head).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, child) = entry {
                insert(child, rest, value);
            }
        }
    }
}
