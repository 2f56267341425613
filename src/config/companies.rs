//! `[[companies]]`: several companies (a Stripe account, a QuickBooks realm, an Alegra
//! account and its DIAN numbering each) served by one process.
//!
//! A company's tables (`stripe`, `quickbooks`, `alegra`, `compliance`) hold the same keys
//! as the top-level tables of those names, and its effective config is the top-level
//! one with its keys laid over, key by key: the top level holds what companies share
//! (base URLs, the Intuit app's keys, limits, breakers, retries). Without `[[companies]]`
//! the config is one company, [`DEFAULT_COMPANY`], exactly as before.
//!
//! A company's values never print: its `Debug` names the keys it sets, not their values.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, line_of_key, redact_quoted};

/// The id of the one company of a config without `[[companies]]`.
pub const DEFAULT_COMPANY: &str = "default";

/// The tables a company may set, in the order they are laid over. `alerts` and
/// `anomaly` hold its thresholds: those tuned at run time are saved there
/// ([`super::persist_thresholds`]), never in the shared top-level tables.
pub const COMPANY_TABLES: [&str; 6] = [
    "stripe",
    "quickbooks",
    "alegra",
    "compliance",
    "alerts",
    "anomaly",
];

/// The keys of a company's tables that hold secrets (`table`, `key`).
const COMPANY_SECRETS: [(&str, &str); 6] = [
    ("stripe", "api_key"),
    ("stripe", "webhook_secret"),
    ("quickbooks", "client_secret"),
    ("quickbooks", "refresh_token"),
    ("alegra", "token"),
    ("alegra", "technical_key"),
];

/// One `[[companies]]` entry as written: its id and name, and the keys it lays over the
/// top-level tables.
#[derive(Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompanyConfig {
    /// 1–32 of `[a-z0-9-]`: in URLs, `--company`, the `/metrics` label, its data dir.
    pub id: String,
    /// Free text, shown to operators.
    pub name: String,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub stripe: toml::Table,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub quickbooks: toml::Table,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub alegra: toml::Table,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub compliance: toml::Table,
    /// Its alert thresholds (tuned at run time for this company alone).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub alerts: toml::Table,
    /// Its anomaly thresholds (tuned at run time for this company alone).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub anomaly: toml::Table,
}

impl fmt::Debug for CompanyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys only: the values hold the company's credentials.
        let keys = |t: &toml::Table| t.keys().cloned().collect::<Vec<_>>();
        f.debug_struct("CompanyConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("stripe", &keys(&self.stripe))
            .field("quickbooks", &keys(&self.quickbooks))
            .field("alegra", &keys(&self.alegra))
            .field("compliance", &keys(&self.compliance))
            .field("alerts", &keys(&self.alerts))
            .field("anomaly", &keys(&self.anomaly))
            .finish()
    }
}

impl CompanyConfig {
    fn table(&self, name: &str) -> Option<&toml::Table> {
        match name {
            "stripe" => Some(&self.stripe),
            "quickbooks" => Some(&self.quickbooks),
            "alegra" => Some(&self.alegra),
            "compliance" => Some(&self.compliance),
            "alerts" => Some(&self.alerts),
            "anomaly" => Some(&self.anomaly),
            _ => None,
        }
    }

    fn table_mut(&mut self, name: &str) -> Option<&mut toml::Table> {
        match name {
            "stripe" => Some(&mut self.stripe),
            "quickbooks" => Some(&mut self.quickbooks),
            "alegra" => Some(&mut self.alegra),
            "compliance" => Some(&mut self.compliance),
            "alerts" => Some(&mut self.alerts),
            "anomaly" => Some(&mut self.anomaly),
            _ => None,
        }
    }

    /// Whether this company's own tables set `table.key` (dotted below the table).
    pub fn sets(&self, dotted: &str) -> bool {
        let mut parts = dotted.split('.');
        let Some(mut at) = parts.next().and_then(|t| self.table(t)) else {
            return false;
        };
        let mut rest: Vec<&str> = parts.collect();
        let Some(last) = rest.pop() else {
            return false;
        };
        for p in rest {
            match at.get(p).and_then(toml::Value::as_table) {
                Some(t) => at = t,
                None => return false,
            }
        }
        at.contains_key(last)
    }

    /// Every secret value this company sets (non-empty).
    pub(super) fn secret_values(&self) -> Vec<String> {
        COMPANY_SECRETS
            .iter()
            .filter_map(|(t, k)| self.table(t)?.get(*k)?.as_str().map(str::to_owned))
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Every secret replaced by `[redacted]`.
    pub(super) fn redact(&mut self) {
        for (t, k) in COMPANY_SECRETS {
            if let Some(v) = self.table_mut(t).and_then(|t| t.get_mut(k)) {
                *v = toml::Value::String(crate::protocol::REDACTED.into());
            }
        }
    }

    pub(super) fn holds_secret(&self) -> bool {
        COMPANY_SECRETS
            .iter()
            .any(|(t, k)| self.table(t).is_some_and(|t| t.contains_key(*k)))
    }
}

/// A checked company's id, QuickBooks (base URL and realm) and Alegra account (base URL
/// and email).
type Seen = (String, Option<String>, Option<(String, String)>);

/// One company as the host runs it: its id, its name and its effective config (the
/// top level with its keys laid over; `companies` empty).
#[derive(Debug, Clone)]
pub struct Company {
    pub id: String,
    pub name: String,
    pub config: Config,
}

/// Whether `id` is a company id: 1–32 of `[a-z0-9-]`.
pub fn valid_company_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Lays `over` onto `base` key by key: tables merge, anything else replaces.
fn lay_over(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => lay_over(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Why one company's effective config could not be made: the key (below the company,
/// e.g. `stripe.api_kee`) and the message.
struct OverlayError {
    key: String,
    message: String,
}

impl Config {
    /// The companies this config serves, each with its effective config: one,
    /// [`DEFAULT_COMPANY`] named "default" with this very config, when there is no
    /// `[[companies]]`.
    pub fn companies(&self) -> anyhow::Result<Vec<Company>> {
        if self.companies.is_empty() {
            return Ok(vec![Company {
                id: DEFAULT_COMPANY.into(),
                name: DEFAULT_COMPANY.into(),
                config: self.clone(),
            }]);
        }
        self.companies
            .iter()
            .map(|c| {
                let config = self.effective(c).map_err(|e| {
                    anyhow::anyhow!("company {:?}: key `{}`: {}", c.id, e.key, e.message)
                })?;
                Ok(Company {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    config,
                })
            })
            .collect()
    }

    /// This config with `company`'s keys laid over (and no companies).
    fn effective(&self, company: &CompanyConfig) -> Result<Config, OverlayError> {
        let mut top = self.clone();
        top.companies.clear();
        let top_err = |e: toml::ser::Error| OverlayError {
            key: String::new(),
            message: format!("the shared tables could not be laid out: {e}"),
        };
        let mut table = toml::Table::try_from(&top).map_err(top_err)?;
        for name in COMPANY_TABLES {
            let Some(over) = company.table(name) else {
                continue;
            };
            if over.is_empty() {
                continue;
            }
            match table.get_mut(name) {
                Some(toml::Value::Table(base)) => lay_over(base, over),
                _ => {
                    table.insert(name.to_owned(), toml::Value::Table(over.clone()));
                }
            }
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let mut key = e.path().to_string();
                let mut message = e.inner().message().trim().to_owned();
                // An unknown key: serde names it in the message, the path stops at its
                // table.
                if let Some(field) = message
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    key = if key.is_empty() || key == "." {
                        field.to_owned()
                    } else if key == field || key.ends_with(&format!(".{field}")) {
                        key
                    } else {
                        format!("{key}.{field}")
                    };
                }
                if COMPANY_SECRETS
                    .iter()
                    .any(|(t, k)| key == format!("{t}.{k}"))
                {
                    message = redact_quoted(&message);
                }
                OverlayError { key, message }
            })?;
        config.source = self.source.clone();
        config.company = Some(company.id.clone());
        Ok(config)
    }

    /// Checks `[[companies]]`: ids, names, each company's own required keys, its
    /// effective config by every rule of the top level, and no two companies on one
    /// realm or one Alegra account. Errors name `companies.<key>` on the company's line.
    pub(super) fn validate_companies(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let at = |i: usize, key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_in_company(text, i, key),
            key: if key.is_empty() {
                "companies".to_owned()
            } else {
                format!("companies.{key}")
            },
            message,
        };
        let mut seen: Vec<Seen> = Vec::new();
        for (i, c) in self.companies.iter().enumerate() {
            let entry = i + 1;
            if !valid_company_id(&c.id) {
                return Err(at(
                    i,
                    "id",
                    format!(
                        "entry {entry}: {:?} must be 1 to 32 of a-z, 0-9 and '-' (it names the company in URLs, --company, /metrics and its data dir)",
                        c.id.chars().take(40).collect::<String>()
                    ),
                ));
            }
            let name = c.name.trim();
            if name.is_empty()
                || c.name.chars().count() > 100
                || c.name.chars().any(char::is_control)
            {
                return Err(at(
                    i,
                    "name",
                    format!("company {:?}: must be 1 to 100 printable characters", c.id),
                ));
            }
            if seen.iter().any(|(id, ..)| *id == c.id) {
                return Err(at(
                    i,
                    "id",
                    format!("entry {entry}: {:?} is already another company's id", c.id),
                ));
            }
            let config = self
                .effective(c)
                .map_err(|e| at(i, &e.key, format!("company {:?}: {}", c.id, e.message)))?;
            // Every rule of the top level, on what this company runs with; the top level
            // passed them, so a failure is this company's keys.
            if let Err(ConfigError::Invalid { key, message, .. }) = config.validate(text, path) {
                return Err(at(i, &key, format!("company {:?}: {message}", c.id)));
            }
            if let Some(key) = missing_own_key(c, &config) {
                return Err(at(
                    i,
                    key,
                    format!(
                        "company {:?}: must be set in its own [companies.{}] table (each company has its own)",
                        c.id,
                        key.split('.').next().unwrap_or_default()
                    ),
                ));
            }
            // One company is one realm of one QuickBooks (and one account of one
            // Alegra): the same id at another base URL is another service's.
            let realm = config.quickbooks.realm_id.clone().map(|r| {
                format!(
                    "{} {r}",
                    config.quickbooks.base_url.as_deref().unwrap_or("")
                )
            });
            let alegra = config
                .alegra
                .base_url
                .clone()
                .zip(config.alegra.email.clone());
            if let Some((other, ..)) = seen.iter().find(|(_, r, _)| realm.is_some() && *r == realm)
            {
                return Err(at(
                    i,
                    "quickbooks.realm_id",
                    format!(
                        "company {:?}: the same QuickBooks realm as company {other:?} (two engines would write one company's Items)",
                        c.id
                    ),
                ));
            }
            if let Some((other, ..)) = seen
                .iter()
                .find(|(_, _, a)| alegra.is_some() && *a == alegra)
            {
                return Err(at(
                    i,
                    "alegra.email",
                    format!(
                        "company {:?}: the same Alegra account as company {other:?} (their invoice numbers would collide)",
                        c.id
                    ),
                ));
            }
            seen.push((c.id.clone(), realm, alegra));
        }
        Ok(())
    }
}

/// The first key a company must set in its own tables and does not: its Stripe
/// account's keys, its realm and refresh token, and its Alegra account when the
/// compliance pipeline runs.
fn missing_own_key(c: &CompanyConfig, config: &Config) -> Option<&'static str> {
    let mut required = vec![
        "stripe.api_key",
        "stripe.webhook_secret",
        "quickbooks.realm_id",
        "quickbooks.refresh_token",
    ];
    if config.alegra.base_url.is_some() {
        required.extend(["alegra.email", "alegra.token"]);
    }
    required.into_iter().find(|key| !c.sets(key))
}

/// The line of `key` (below the company: `stripe.api_key`, `id`) in the `index`-th
/// (0-based) `[[companies]]` entry; else that entry's header line; else the line of
/// the first `[[companies]]`, or of the key at the top level.
fn line_in_company(text: &str, index: usize, key: &str) -> usize {
    let mut seen = 0usize;
    let mut inside = false;
    let mut header = 0;
    // The header of the key's own table (`[companies.stripe]`), where a missing key
    // goes.
    let mut table_header = 0;
    let table = key.rsplit_once('.').map(|(t, _)| t);
    let mut section = String::new();
    for (n, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[').trim_end_matches(']').trim();
            let name = name.split('#').next().unwrap_or(name).trim();
            if t.starts_with("[[") && name.replace(' ', "") == "companies" {
                inside = seen == index;
                if inside {
                    header = n + 1;
                }
                seen += 1;
                section.clear();
            } else if inside && let Some(sub) = name.strip_prefix("companies.") {
                section = sub.trim().to_owned();
                if table == Some(section.as_str()) {
                    table_header = n + 1;
                }
            } else {
                inside = false;
            }
            continue;
        }
        if inside && let Some((k, _)) = t.split_once('=') {
            let k = k.trim().replace(' ', "");
            let dotted = if section.is_empty() {
                k
            } else {
                format!("{section}.{k}")
            };
            if dotted == key {
                return n + 1;
            }
        }
    }
    if table_header > 0 {
        return table_header;
    }
    if header > 0 {
        return header;
    }
    line_of_key(text, key)
}
