//! How the appliance talks to AWS: one HTTPS client (rustls with ring; no other TLS stack is built), the
//! SDK's default credential chain for the service account (environment, profile, instance profile through
//! IMDSv2), the SDK's standard retry for throttling and transient faults, and the endpoint from the SDK's
//! own `AWS_ENDPOINT_URL` variables, so that tests aim everything at a local stand-in without flags of ours.

use std::time::Duration;

use aws_config::identity::IdentityCache;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// Calls are tried this often in all before their error is reported (throttling, 5xx, timeouts).
const MAX_ATTEMPTS: u32 = 5;

/// Credentials are renewed this long before they expire, so no call starts with credentials that lapse
/// during it.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// The one HTTPS client every service and credential provider uses.
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https()
}

/// The service account's configuration: the default chain, in `region` when given (else the chain's own
/// region, else us-east-1).
pub async fn service_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .identity_cache(IdentityCache::lazy().buffer_time(RENEW_BEFORE_EXPIRY).build());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        return config.into_builder().region(aws_config::Region::from_static("us-east-1")).build();
    }
    config
}

/// The code and message of an SDK error, for one-line reports (one function for the library's S3 client
/// and the appliance's).
pub use dedup::s3::describe;

/// EC2, EBS direct, S3 and STS clients over `config`, each with the call observer below.
pub fn ec2(config: &SdkConfig) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::from_conf(aws_sdk_ec2::config::Builder::from(config).interceptor(Observe::new()).build())
}

pub fn ebs(config: &SdkConfig) -> aws_sdk_ebs::Client {
    aws_sdk_ebs::Client::from_conf(aws_sdk_ebs::config::Builder::from(config).interceptor(Observe::new()).build())
}

/// S3 in path style when the endpoint is set (a local stand-in or an S3-compatible store answers on one
/// host name, not one per bucket); AWS's own virtual-hosted style otherwise.
pub fn s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    let b = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(config.endpoint_url().is_some())
        .interceptor(Observe::new());
    aws_sdk_s3::Client::from_conf(b.build())
}

pub fn sts(config: &SdkConfig) -> aws_sdk_sts::Client {
    aws_sdk_sts::Client::from_conf(aws_sdk_sts::config::Builder::from(config).interceptor(Observe::new()).build())
}

/// Calls and failed calls (after the SDK's retries) by service and action, since the daemon started.
static CLOUD_CALLS: std::sync::Mutex<std::collections::BTreeMap<(String, String), (u64, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// (service, action, calls, errors) of every action called so far, for the metrics.
pub fn cloud_calls() -> Vec<(String, String, u64, u64)> {
    let calls = CLOUD_CALLS.lock().unwrap_or_else(|p| p.into_inner());
    calls.iter().map(|((service, action), (n, errors))| (service.clone(), action.clone(), *n, *errors)).collect()
}

/// Sees every call of a client once it is done: counts it in `CLOUD_CALLS` and, under the test crash hook
/// (`crate::crash_hook`: `LIVEMOUNT_TEST_KILL_AFTER=RunInstances`), kills the daemon as soon as that action
/// has succeeded.
#[derive(Debug)]
struct Observe {
    kill_after: Option<String>,
}

impl Observe {
    fn new() -> Observe {
        Observe { kill_after: crate::crash_hook::point() }
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for Observe {
    fn name(&self) -> &'static str {
        "livemount call observer"
    }

    fn read_after_execution(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let Some(meta) = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>() else { return Ok(()) };
        let succeeded = matches!(context.output_or_error(), Some(Ok(_)));
        {
            let mut calls = CLOUD_CALLS.lock().unwrap_or_else(|p| p.into_inner());
            let entry = calls.entry((meta.service().to_string(), meta.name().to_string())).or_default();
            entry.0 += 1;
            entry.1 += u64::from(!succeeded);
        }
        if succeeded && self.kill_after.as_deref() == Some(meta.name()) {
            crate::crash_hook::kill(meta.name());
        }
        Ok(())
    }
}
