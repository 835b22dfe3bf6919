//! The instance that boots a live mount: launched in a member account from the shared iPXE image, with
//! user-data that chains to the mount's script on this appliance; terminated when the mount goes.

use std::time::Duration;

use aws_sdk_ec2::types::{
    HttpTokensState, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    ResourceType, TagSpecification,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::api_types::CloudRequest;

use super::journal::{Kind, Purpose, Resource};
use super::poll::Poll;
use super::{ec2_tags, filter, sdk, Cloud, CloudError, TAG_APPLIANCE, TAG_MOUNT};

/// The cloud part of a mount, as mount.json keeps it and the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CloudMount {
    pub account: String,
    pub region: String,
    pub image_id: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
    pub state: CloudState,
    /// IMDSv1 has been turned off on the instance (after it fetched its script).
    #[serde(default)]
    pub imds_v2_only: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloudState {
    /// RunInstances may have been called; not yet known to run.
    Launching,
    Running,
}

impl CloudMount {
    /// How a person reads the instance's serial console.
    pub fn console_hint(&self) -> Option<String> {
        let id = self.instance_id.as_ref()?;
        Some(format!("aws ec2 get-console-output --latest --output text --region {} --instance-id {id}", self.region))
    }
}

const DEFAULT_INSTANCE_TYPE: &str = "t3.small";
const WAIT: Duration = Duration::from_secs(600);

/// The client token of a mount's RunInstances: derived from the mount id, so that a retried call never
/// makes a second instance.
pub fn client_token(mount_id: &str) -> String {
    format!("livemount-{mount_id}-instance")
}

/// Launches the instance of mount `mount_id` and waits until it runs. `cloud_mount` is saved by the caller
/// before this is called (state Launching), so that a crash at any point leaves a mount that the
/// reconciliation undoes.
pub async fn launch(
    cloud: &Cloud,
    req: &CloudRequest,
    region: &str,
    mount_id: &str,
    image_id: &str,
    script_url: &str,
) -> Result<CloudMount, CloudError> {
    let account = req.account.as_str();
    let config = cloud.accounts.config(account, region, "mount").await?;
    let ec2 = sdk::ec2(&config);
    if let Some(subnet) = &req.subnet {
        let found = ec2.describe_subnets().subnet_ids(subnet).send().await;
        let missing = match found {
            Ok(out) => out.subnets().is_empty(),
            Err(e) => {
                let err = CloudError::aws(account, "DescribeSubnets")(e);
                if err.code() != Some("InvalidSubnetID.NotFound") {
                    return Err(err);
                }
                true
            }
        };
        if missing {
            return Err(CloudError::Missing(format!(
                "there is no subnet {subnet} in account {account} ({region}): `aws ec2 describe-subnets` lists them"
            )));
        }
    }
    let purpose = Purpose::Mount(mount_id.to_string());
    let tags = ec2_tags(&cloud.tags(&purpose));
    let token = client_token(mount_id);
    cloud.journal.intent(&Resource::planned(Kind::Instance, account, region, &purpose, &token))?;
    let user_data = image::ipxe::user_data_script(mount_id, script_url);
    let instance_type = req.instance_type.as_deref().unwrap_or(DEFAULT_INSTANCE_TYPE);
    let run = ec2
        .run_instances()
        .image_id(image_id)
        .instance_type(InstanceType::from(instance_type))
        .min_count(1)
        .max_count(1)
        .client_token(&token)
        .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
        .set_subnet_id(req.subnet.clone())
        .set_security_group_ids((!req.security_groups.is_empty()).then(|| req.security_groups.clone()))
        // IMDSv1 only until the instance fetched its script (see image::ipxe::ec2_script); one hop, so
        // nothing behind the instance reaches the metadata service.
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                .http_tokens(HttpTokensState::Optional)
                .http_put_response_hop_limit(1)
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags.clone())).build(),
        )
        .tag_specifications(
            TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags)).build(),
        )
        .send()
        .await;
    let out = match run {
        Ok(out) => out,
        Err(e) => {
            let err = CloudError::aws(account, "RunInstances")(e);
            return Err(explain_launch_error(err, image_id, instance_type, region));
        }
    };
    let instance_id = out.instances().first().and_then(|i| i.instance_id()).unwrap_or_default().to_string();
    cloud.journal.made(&token, &instance_id)?;
    let (state, private_ip) = wait_state(&ec2, account, &instance_id, InstanceStateName::Running).await?;
    tracing::info!(mount = %mount_id, instance = %instance_id, ?state, "instance running");
    Ok(CloudMount {
        account: account.into(),
        region: region.into(),
        image_id: image_id.into(),
        instance_id: Some(instance_id),
        private_ip,
        state: CloudState::Running,
        imds_v2_only: false,
    })
}

/// Turns IMDSv1 off on the instance: from now on its metadata needs an IMDSv2 token.
pub async fn require_imds_v2(cloud: &Cloud, m: &CloudMount) -> Result<(), CloudError> {
    let Some(id) = &m.instance_id else { return Ok(()) };
    let config = cloud.accounts.config(&m.account, &m.region, "mount").await?;
    sdk::ec2(&config)
        .modify_instance_metadata_options()
        .instance_id(id)
        .http_tokens(HttpTokensState::Required)
        .send()
        .await
        .map_err(CloudError::aws(&m.account, "ModifyInstanceMetadataOptions"))?;
    Ok(())
}

/// Terminates every instance of mount `mount_id` (the one recorded, and any found by its tag: a crash may
/// have hidden one from the record) and waits until they are terminated.
pub async fn terminate_mount(
    cloud: &Cloud,
    account: &str,
    region: &str,
    mount_id: &str,
) -> Result<Vec<String>, CloudError> {
    let config = cloud.accounts.config(account, region, "unmount").await?;
    let ec2 = sdk::ec2(&config);
    let mut ids: Vec<String> = instances_of(&ec2, account, &cloud.appliance_id, Some(mount_id)).await?;
    if let Some(r) = cloud.journal.get(&client_token(mount_id)) {
        if let Some(id) = r.id.filter(|id| !ids.contains(id)) {
            ids.push(id);
        }
    }
    terminate(&ec2, account, &ids).await?;
    cloud.journal.gone(&client_token(mount_id))?;
    Ok(ids)
}

/// Terminates `ids` and waits until each is terminated (an id EC2 no longer knows counts as terminated).
pub async fn terminate(ec2: &aws_sdk_ec2::Client, account: &str, ids: &[String]) -> Result<(), CloudError> {
    if ids.is_empty() {
        return Ok(());
    }
    let r = ec2.terminate_instances().set_instance_ids(Some(ids.to_vec())).send().await;
    if let Err(e) = r {
        let err = CloudError::aws(account, "TerminateInstances")(e);
        if err.code() != Some("InvalidInstanceID.NotFound") {
            return Err(err);
        }
    }
    for id in ids {
        wait_state(ec2, account, id, InstanceStateName::Terminated).await?;
    }
    Ok(())
}

/// The instances (not terminated) that carry this appliance's tag, and the mount's when given.
pub async fn instances_of(
    ec2: &aws_sdk_ec2::Client,
    account: &str,
    appliance: &str,
    mount: Option<&str>,
) -> Result<Vec<String>, CloudError> {
    let mut call = ec2
        .describe_instances()
        .filters(filter(&format!("tag:{TAG_APPLIANCE}"), &[appliance]))
        .filters(filter("instance-state-name", &["pending", "running", "shutting-down", "stopping", "stopped"]));
    if let Some(m) = mount {
        call = call.filters(filter(&format!("tag:{TAG_MOUNT}"), &[m]));
    }
    let out = call.send().await.map_err(CloudError::aws(account, "DescribeInstances"))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect())
}

/// Waits until instance `id` is in `want`; gives its state and private address.
pub(super) async fn wait_state(
    ec2: &aws_sdk_ec2::Client,
    account: &str,
    id: &str,
    want: InstanceStateName,
) -> Result<(InstanceStateName, Option<String>), CloudError> {
    let mut poll = Poll::new(format!("instance {id}"), want.as_str(), WAIT, Duration::from_millis(250));
    loop {
        let out = ec2.describe_instances().instance_ids(id).send().await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let err = CloudError::aws(account, "DescribeInstances")(e);
                if err.code() == Some("InvalidInstanceID.NotFound") && want == InstanceStateName::Terminated {
                    return Ok((want, None));
                }
                return Err(err);
            }
        };
        let inst = out.reservations().iter().flat_map(|r| r.instances()).next();
        let state = inst.and_then(|i| i.state()).and_then(|s| s.name()).cloned();
        match &state {
            None if want == InstanceStateName::Terminated => return Ok((want, None)),
            Some(s) if *s == want => return Ok((want, inst.and_then(|i| i.private_ip_address()).map(str::to_string))),
            Some(InstanceStateName::Terminated) | Some(InstanceStateName::ShuttingDown)
                if want == InstanceStateName::Running =>
            {
                let reason = inst.and_then(|i| i.state_reason()).and_then(|r| r.message()).unwrap_or("no reason given");
                return Err(CloudError::Conflict(format!("instance {id} stopped before it ran: {reason}")));
            }
            _ => {}
        }
        poll.pause(format!("{state:?}")).await?;
    }
}

/// RunInstances' common refusals, said with what to do.
fn explain_launch_error(err: CloudError, image_id: &str, instance_type: &str, region: &str) -> CloudError {
    let hint = match err.code() {
        Some("InvalidAMIID.NotFound") | Some("InvalidAMIID.Unavailable") => format!(
            "the iPXE image {image_id} is not available to this account in {region}: publish it again with `livemount cloud image ipxe --region {region}`"
        ),
        Some("InvalidSubnetID.NotFound") => "the subnet does not exist in this account and Region".into(),
        Some("InvalidGroup.NotFound") => "a security group does not exist in this account and Region".into(),
        Some("InsufficientInstanceCapacity") => format!(
            "AWS has no {instance_type} capacity here now: try another --instance-type or --subnet (availability zone)"
        ),
        Some("Unsupported") | Some("InvalidParameterValue") => {
            format!("{instance_type} may not be offered here: try another --instance-type")
        }
        _ => return err,
    };
    match err {
        CloudError::Aws { account, action, code, message } => {
            CloudError::Aws { account, action, code, message: format!("{message} ({hint})") }
        }
        other => other,
    }
}
