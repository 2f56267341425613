//! Who is acting: the operator's name as audits record it, and what a caller may do.

use serde::{Deserialize, Serialize};

/// What a caller may do: a token's role, or a console attached read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May read and act.
    #[default]
    Operator,
    /// May only read: the engine refuses its commands.
    Viewer,
}

/// Who did something: OS user, and SSH client address when there is one. Under
/// `sudo -u syncctl …` (the service's user, to reach its data dir) the person is the
/// one who ran sudo, not the service account.
pub fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_from_uid)
        .unwrap_or_else(|| "unknown".into());
    match std::env::var("SSH_CLIENT")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
    {
        Some(addr) => format!("{user}@{addr}"),
        None => user,
    }
}

/// The name of the process's user from /etc/passwd (when the environment has none).
fn user_from_uid() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let name = passwd.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == uid.to_string()).then(|| name.to_owned())
        });
        Some(name.unwrap_or_else(|| format!("uid {uid}")))
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_operator_has_a_name_even_without_user_in_the_environment() {
        assert!(super::user_from_uid().is_some_and(|u| !u.is_empty()));
    }
}
