//! The deployment namespace: the optional prefix in front of every subject, stream and bucket.

use switchyard_keys::DeploymentPrefix;

use crate::{SubjectError, VERSION};

/// One deployment's namespace. With prefix `staging`, `ingress.v1.acme.ops.slack` becomes
/// `staging.ingress.v1.acme.ops.slack`, stream `INGRESS` becomes `STAGING_INGRESS` and bucket
/// `routes` becomes `staging_routes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    prefix: Option<DeploymentPrefix>,
}

impl Namespace {
    /// A namespace with an optional deployment prefix.
    pub fn new(prefix: Option<DeploymentPrefix>) -> Self {
        Self { prefix }
    }

    /// The deployment prefix, if any.
    pub fn prefix(&self) -> Option<&DeploymentPrefix> {
        self.prefix.as_ref()
    }

    /// The JetStream stream name for a declared base name (`INGRESS` → `STAGING_INGRESS`).
    pub fn stream_name(&self, base: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{}_{base}", p.as_str().to_ascii_uppercase()),
            None => base.to_owned(),
        }
    }

    /// The KV bucket name for a declared base name (`routes` → `staging_routes`).
    pub fn bucket_name(&self, base: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}_{base}"),
            None => base.to_owned(),
        }
    }

    /// `[p.]<root>.v1` — the head every subject of one kind starts with.
    pub(crate) fn head(&self, root: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{root}.{VERSION}"),
            None => format!("{root}.{VERSION}"),
        }
    }

    /// `[p.]<root>.v1.<rest>`.
    pub(crate) fn subject(&self, root: &str, rest: &[&str]) -> String {
        let mut out = self.head(root);
        for token in rest {
            out.push('.');
            out.push_str(token);
        }
        out
    }

    /// Strips the prefix and returns `(root, version-checked tokens after the version)`.
    pub(crate) fn split<'a>(
        &self,
        subject: &'a str,
    ) -> Result<(&'a str, Vec<&'a str>), SubjectError> {
        let mut tokens = subject.split('.');
        if let Some(prefix) = &self.prefix
            && tokens.next() != Some(prefix.as_str())
        {
            return Err(SubjectError::WrongPrefix {
                subject: subject.to_owned(),
                prefix: prefix.to_string(),
            });
        }
        let root = tokens.next().unwrap_or_default();
        match tokens.next() {
            Some(VERSION) => Ok((root, tokens.collect())),
            found => Err(SubjectError::UnsupportedVersion {
                subject: subject.to_owned(),
                found: found.unwrap_or_default().to_owned(),
            }),
        }
    }
}
