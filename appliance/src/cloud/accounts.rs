//! The AWS accounts the appliance works in. The service account is the appliance's own (the SDK's default
//! credential chain); member accounts are roles it assumes with STS AssumeRole. Only what identifies a
//! role is stored (`<state>/cloud/accounts.json`), never a secret: credentials are asked for when needed,
//! kept in memory, and renewed before they expire (`sdk::RENEW_BEFORE_EXPIRY`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_config::SdkConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use serde::{Deserialize, Serialize};

use super::error::CloudError;
use super::sdk;

/// The name of the appliance's own account.
pub const SERVICE: &str = "service";

/// A member account as `cloud account add` records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Account {
    pub name: String,
    /// The role to assume; none for the service account.
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    /// The account's default Region (else the service account's).
    #[serde(default)]
    pub region: Option<String>,
}

impl Account {
    /// The account id, as the role ARN names it (`arn:aws:iam::<id>:role/<name>`).
    pub fn id_from_arn(&self) -> Option<&str> {
        self.role_arn.as_deref()?.split(':').nth(4).filter(|id| id.len() == 12)
    }
}

/// The known accounts and, per account, Region and operation, a ready SDK configuration.
pub struct Accounts {
    path: PathBuf,
    appliance_id: String,
    members: Mutex<BTreeMap<String, Account>>,
    configs: tokio::sync::Mutex<HashMap<(String, String, String), SdkConfig>>,
    ids: Mutex<HashMap<String, String>>,
}

impl Accounts {
    pub fn load(cloud_dir: &Path, appliance_id: &str) -> Result<Accounts, CloudError> {
        let path = cloud_dir.join("accounts.json");
        let members = match std::fs::read(&path) {
            Ok(data) => {
                let list: Vec<Account> = serde_json::from_slice(&data).map_err(|e| {
                    CloudError::io("parse", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                })?;
                list.into_iter().map(|a| (a.name.clone(), a)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(CloudError::io("read", &path)(e)),
        };
        Ok(Accounts {
            path,
            appliance_id: appliance_id.to_string(),
            members: Mutex::new(members),
            configs: tokio::sync::Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
        })
    }

    fn save(&self, members: &BTreeMap<String, Account>) -> Result<(), CloudError> {
        let list: Vec<&Account> = members.values().collect();
        let json = serde_json::to_vec_pretty(&list).expect("accounts are plain data");
        dedup::durable::write_file(&self.path, &json).map_err(CloudError::io("write", &self.path))
    }

    pub fn add(&self, account: Account) -> Result<(), CloudError> {
        validate(&account)?;
        let mut members = self.members.lock().expect("not poisoned");
        if members.get(&account.name).is_some_and(|a| *a != account) {
            return Err(CloudError::Conflict(format!(
                "account {} exists with other settings; remove it first (`livemount cloud account remove {}`)",
                account.name, account.name
            )));
        }
        members.insert(account.name.clone(), account);
        self.save(&members)
    }

    pub fn remove(&self, name: &str) -> Result<Account, CloudError> {
        let mut members = self.members.lock().expect("not poisoned");
        let gone = members.remove(name).ok_or_else(|| CloudError::UnknownAccount(name.to_string()))?;
        self.save(&members)?;
        drop(members);
        self.configs.try_lock().map(|mut c| c.retain(|k, _| k.0 != name)).ok();
        self.ids.lock().expect("not poisoned").remove(name);
        Ok(gone)
    }

    /// The service account first, then the members by name.
    /// Adds or, when its settings differ, replaces a member account the configuration file declares.
    pub fn declare(&self, account: Account) -> Result<(), CloudError> {
        validate(&account)?;
        let mut members = self.members.lock().expect("not poisoned");
        if members.get(&account.name) == Some(&account) {
            return Ok(());
        }
        members.insert(account.name.clone(), account);
        self.save(&members)
    }

    pub fn list(&self) -> Vec<Account> {
        let service = Account { name: SERVICE.into(), role_arn: None, external_id: None, region: None };
        std::iter::once(service).chain(self.members.lock().expect("not poisoned").values().cloned()).collect()
    }

    pub fn get(&self, name: &str) -> Result<Account, CloudError> {
        self.list().into_iter().find(|a| a.name == name).ok_or_else(|| CloudError::UnknownAccount(name.to_string()))
    }

    /// The Region an operation in `account` uses when the request names none.
    pub async fn region_of(&self, account: &str, asked: Option<&str>) -> Result<String, CloudError> {
        if let Some(r) = asked {
            return Ok(r.to_string());
        }
        if let Some(r) = self.get(account)?.region {
            return Ok(r);
        }
        let base = sdk::service_config(None).await;
        Ok(base.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into()))
    }

    /// The SDK configuration for `operation` (a word: mount, image, cleanup) in `account` and `region`.
    /// For a member the role is assumed here, so that a role that cannot be assumed is reported at once,
    /// with its ARN, rather than as the failure of some later call.
    pub async fn config(&self, account: &str, region: &str, operation: &str) -> Result<SdkConfig, CloudError> {
        let key = (account.to_string(), region.to_string(), operation.to_string());
        let mut configs = self.configs.lock().await;
        if let Some(c) = configs.get(&key) {
            return Ok(c.clone());
        }
        let a = self.get(account)?;
        let base = sdk::service_config(Some(region)).await;
        let config = match &a.role_arn {
            None => base,
            Some(arn) => {
                let mut role = aws_config::sts::AssumeRoleProvider::builder(arn)
                    .session_name(self.session_name(operation))
                    .region(aws_config::Region::new(region.to_string()));
                if let Some(ext) = &a.external_id {
                    role = role.external_id(ext);
                }
                let provider = role.configure(&base).build().await;
                if let Err(e) = provider.provide_credentials().await {
                    return Err(CloudError::AssumeRole {
                        account: a.name.clone(),
                        role_arn: arn.clone(),
                        external_id: a
                            .external_id
                            .as_ref()
                            .map(|_| " with the ExternalId condition it was added with".to_string())
                            .unwrap_or_default(),
                        message: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
                    });
                }
                base.into_builder().credentials_provider(SharedCredentialsProvider::new(provider)).build()
            }
        };
        configs.insert(key, config.clone());
        Ok(config)
    }

    /// The session name of an assumed role: which appliance and which operation (CloudTrail shows it).
    fn session_name(&self, operation: &str) -> String {
        let mut s = format!("livemount-{}-{operation}", &self.appliance_id[..8.min(self.appliance_id.len())]);
        s.retain(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c));
        s.truncate(64);
        s
    }

    /// The 12-digit id of `account` as STS reports it for the credentials in use, and the ARN they act as.
    pub async fn identity(&self, account: &str, region: &str) -> Result<(String, String), CloudError> {
        let config = self.config(account, region, "check").await?;
        let sts = sdk::sts(&config);
        let me = sts.get_caller_identity().send().await.map_err(CloudError::aws(account, "GetCallerIdentity"))?;
        let id = me.account().unwrap_or_default().to_string();
        self.ids.lock().expect("not poisoned").insert(account.to_string(), id.clone());
        Ok((id, me.arn().unwrap_or_default().to_string()))
    }

    /// The 12-digit id of `account` (a known account's name, or an id itself), asked of STS once.
    pub async fn account_id(&self, account: &str, region: &str) -> Result<String, CloudError> {
        if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(account.to_string());
        }
        if let Some(id) = self.ids.lock().expect("not poisoned").get(account) {
            return Ok(id.clone());
        }
        if let Some(id) = self.get(account)?.id_from_arn() {
            return Ok(id.to_string());
        }
        Ok(self.identity(account, region).await?.0)
    }
}

fn validate(a: &Account) -> Result<(), CloudError> {
    let name_ok = !a.name.is_empty()
        && a.name.len() <= 64
        && a.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && a.name != SERVICE;
    if !name_ok {
        return Err(CloudError::BadRequest(format!(
            "{:?} cannot name an account: use letters, digits, - and _ (and not {SERVICE:?}, the appliance's own)",
            a.name
        )));
    }
    let arn = a.role_arn.as_deref().unwrap_or_default();
    let parts: Vec<&str> = arn.split(':').collect();
    let arn_ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "iam"
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].starts_with("role/");
    if !arn_ok {
        return Err(CloudError::BadRequest(format!("{arn:?} is not a role ARN (arn:aws:iam::123456789012:role/NAME)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, arn: &str) -> Account {
        Account { name: name.into(), role_arn: Some(arn.into()), external_id: None, region: None }
    }

    #[test]
    fn accounts_are_kept_without_secrets_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Accounts::load(dir.path(), "0123456789abcdef").unwrap();
        a.add(member("prod", "arn:aws:iam::111111111111:role/livemount")).unwrap();
        let again = Accounts::load(dir.path(), "0123456789abcdef").unwrap();
        let names: Vec<String> = again.list().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["service", "prod"]);
        assert_eq!(again.get("prod").unwrap().id_from_arn(), Some("111111111111"));
        let text = std::fs::read_to_string(dir.path().join("accounts.json")).unwrap();
        assert!(!text.to_lowercase().contains("secret"), "{text}");
        assert!(matches!(again.get("nope"), Err(CloudError::UnknownAccount(_))));
        again.remove("prod").unwrap();
        assert_eq!(Accounts::load(dir.path(), "x").unwrap().list().len(), 1);
    }

    #[test]
    fn bad_names_and_arns_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Accounts::load(dir.path(), "0123456789abcdef").unwrap();
        for bad in [
            member("service", "arn:aws:iam::111111111111:role/x"),
            member("a b", "arn:aws:iam::111111111111:role/x"),
            member("ok", "arn:aws:iam::1111:role/x"),
            member("ok", "arn:aws:s3:::bucket"),
        ] {
            assert!(matches!(a.add(bad.clone()), Err(CloudError::BadRequest(_))), "{bad:?}");
        }
        a.add(member("ok", "arn:aws:iam::111111111111:role/x")).unwrap();
        let other = member("ok", "arn:aws:iam::222222222222:role/x");
        assert!(matches!(a.add(other), Err(CloudError::Conflict(_))));
    }
}
