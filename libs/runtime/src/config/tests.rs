//! Layering tests for [`super::load`], run inside `figment::Jail` (isolated cwd and env).

#![allow(
    clippy::result_large_err,
    reason = "figment::Jail closures must return figment::Error"
)]

use std::path::PathBuf;

use figment::Jail;
use serde::Deserialize;

use super::*;

const DEFAULTS: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"

[telemetry]
log_filter = "info"

[deployment.buckets]
idempotency = "idempotency"
rate-limits = "rate-limits"
"#;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct AppConfig {
    nats: NatsConfig,
    telemetry: TelemetryConfig,
    deployment: Deployment,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Deployment {
    buckets: Buckets,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Buckets {
    idempotency: String,
    rate_limits: String,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct NoBuckets {
    nats: NatsConfig,
}

fn source() -> ConfigSource {
    ConfigSource::new(DEFAULTS, "TEST_")
}

fn load_app(source: &ConfigSource) -> figment::error::Result<AppConfig> {
    load(source).map_err(|e| e.to_string().into())
}

#[test]
fn defaults_only_match_the_documented_defaults() {
    Jail::expect_with(|_| {
        let config = load_app(&source())?;
        assert_eq!(config.nats, NatsConfig::default());
        assert_eq!(config.telemetry, TelemetryConfig::default());
        assert_eq!(config.nats.connect_timeout_secs, 5);
        assert_eq!(config.nats.request_timeout_secs, 10);
        assert_eq!(config.nats.inbox_prefix, DEFAULT_INBOX_PREFIX);
        assert_eq!(config.telemetry.log_format, LogFormat::Text);
        assert_eq!(config.deployment.buckets.idempotency, "idempotency");
        assert_eq!(config.deployment.buckets.rate_limits, "rate-limits");
        Ok(())
    });
}

#[test]
fn file_overrides_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "app.toml",
            "[nats]\nurl = \"nats://file:4222\"\nconnect_timeout_secs = 7\n\
             [telemetry]\nlog_format = \"json\"\n",
        )?;
        let config = load_app(&source().with_file(Some("app.toml".into())))?;
        assert_eq!(config.nats.url, "nats://file:4222");
        assert_eq!(config.nats.connect_timeout_secs, 7);
        assert_eq!(config.nats.request_timeout_secs, 10);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        assert_eq!(config.telemetry.log_filter, "info");
        Ok(())
    });
}

#[test]
fn env_overrides_file() {
    Jail::expect_with(|jail| {
        jail.create_file("app.toml", "[nats]\nurl = \"nats://file:4222\"\n")?;
        jail.set_env("TEST_NATS__URL", "nats://a:4222,nats://b:4222");
        jail.set_env("TEST_NATS__CREDS_FILE", "/etc/nats/app.creds");
        jail.set_env("TEST_NATS__PASSWORD", "007");
        jail.set_env("TEST_NATS__TOKEN", "true");
        jail.set_env("TEST_NATS__TLS_REQUIRED", "true");
        jail.set_env("TEST_NATS__REQUEST_TIMEOUT_SECS", "30");
        jail.set_env("TEST_NATS__INBOX_PREFIX", "_INBOX_egress");
        jail.set_env("TEST_TELEMETRY__LOG_FILTER", "debug,async_nats=warn");
        let config = load_app(&source().with_file(Some("app.toml".into())))?;
        assert_eq!(config.nats.urls(), ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(
            config.nats.creds_file,
            Some(PathBuf::from("/etc/nats/app.creds"))
        );
        assert_eq!(config.nats.password.as_deref(), Some("007"));
        assert_eq!(config.nats.token.as_deref(), Some("true"));
        assert!(config.nats.tls_required);
        assert_eq!(config.nats.request_timeout_secs, 30);
        assert_eq!(config.nats.inbox_prefix, "_INBOX_egress");
        assert_eq!(config.telemetry.log_filter, "debug,async_nats=warn");
        Ok(())
    });
}

#[test]
fn missing_file_is_an_error() {
    Jail::expect_with(|_| {
        let err = load::<AppConfig>(&source().with_file(Some("absent.toml".into())))
            .expect_err("a missing file must be reported");
        assert!(matches!(err, ConfigError::FileNotFound { .. }), "{err}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn unknown_key_in_file_is_rejected_by_name() {
    Jail::expect_with(|jail| {
        jail.create_file("app.toml", "[nats]\nconect_timeout_secs = 3\n")?;
        let err = load::<AppConfig>(&source().with_file(Some("app.toml".into())))
            .expect_err("an unknown key must be rejected");
        let message = err.to_string();
        assert!(message.contains("conect_timeout_secs"), "{message}");
        assert!(message.contains("app.toml"), "{message}");
        Ok(())
    });
}

#[test]
fn unknown_key_in_env_is_rejected_by_name() {
    Jail::expect_with(|jail| {
        jail.set_env("TEST_TELEMETRY__LOG_LEVEL", "debug");
        let err = load::<AppConfig>(&source()).expect_err("an unknown key must be rejected");
        let message = err.to_string();
        assert!(message.to_lowercase().contains("log_level"), "{message}");
        Ok(())
    });
}

#[test]
fn bad_value_names_its_key() {
    Jail::expect_with(|jail| {
        jail.set_env("TEST_TELEMETRY__LOG_FORMAT", "yaml");
        let err = load::<AppConfig>(&source()).expect_err("an unknown variant must be rejected");
        let message = err.to_string();
        assert!(message.contains("yaml"), "{message}");
        assert!(message.to_lowercase().contains("log_format"), "{message}");
        Ok(())
    });
}

#[test]
fn non_numeric_env_value_for_a_number_names_its_key() {
    Jail::expect_with(|jail| {
        jail.set_env("TEST_NATS__CONNECT_TIMEOUT_SECS", "soon");
        let err = load::<AppConfig>(&source()).expect_err("not a number");
        let message = err.to_string();
        assert!(message.contains("soon"), "{message}");
        assert!(
            message.to_lowercase().contains("connect_timeout_secs"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn bucket_env_overrides_apply_only_when_enabled() {
    Jail::expect_with(|jail| {
        jail.set_env("JS_KV_NAMESPACE_IDEMPOTENCY", "prod-idempotency");
        jail.set_env("JS_KV_NAMESPACE_BACKPRESSURE", "prod-rate-limits");

        let off = load_app(&source())?;
        assert_eq!(off.deployment.buckets.idempotency, "idempotency");
        assert_eq!(off.deployment.buckets.rate_limits, "rate-limits");

        let on = load_app(&source().with_bucket_env_overrides(true))?;
        assert_eq!(on.deployment.buckets.idempotency, "prod-idempotency");
        assert_eq!(on.deployment.buckets.rate_limits, "prod-rate-limits");
        Ok(())
    });
}

#[test]
fn bucket_env_vars_do_not_break_configs_without_buckets() {
    Jail::expect_with(|jail| {
        jail.set_env("JS_KV_NAMESPACE_IDEMPOTENCY", "prod-idempotency");
        let source = ConfigSource::new("[nats]\n", "TEST_");
        let config: NoBuckets = load(&source).map_err(|e| e.to_string())?;
        assert_eq!(config.nats, NatsConfig::default());
        Ok(())
    });
}

#[test]
fn url_list_is_split_and_trimmed() {
    let config = NatsConfig {
        url: " nats://a:4222 , nats://b:4222,, ".to_owned(),
        ..NatsConfig::default()
    };
    assert_eq!(config.urls(), ["nats://a:4222", "nats://b:4222"]);
}
