//! `[relay]` in the configuration file (docs/operations.md "Media relay").

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use sip_net::Listen;

use super::RelaySettings;

/// The `[relay]` table (every key optional; the relay is off by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    pub enabled: Option<bool>,
    /// `FIRST-LAST`, inclusive (default `40000-40999`): one socket per port.
    pub ports: Option<String>,
    /// Bound and advertised in `a=permit-relay` (default: the first listener's IP).
    pub address: Option<IpAddr>,
    /// A relay call with no packet and no latch this long is freed (default 60).
    pub inactivity_s: Option<u64>,
    /// Relay the audio sections of a video call too (default false).
    pub audio: Option<bool>,
}

/// The relay of a running proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub settings: RelaySettings,
    pub audio: bool,
}

/// A `[relay]` the proxy cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayConfigError {
    #[error("bad [relay] ports {0:?}: expected FIRST-LAST, 1024 <= FIRST < LAST <= 65535")]
    Ports(String),
    #[error(
        "[relay] address {0} cannot be advertised: give the IP the phones reach (address = \"...\")"
    )]
    Address(IpAddr),
}

pub const DEFAULT_PORTS: (u16, u16) = (40_000, 40_999);
pub const DEFAULT_INACTIVITY: Duration = Duration::from_mins(1);

fn parse_ports(s: &str) -> Result<(u16, u16), RelayConfigError> {
    let bad = || RelayConfigError::Ports(s.to_owned());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let first: u16 = a.trim().parse().map_err(|_| bad())?;
    let last: u16 = b.trim().parse().map_err(|_| bad())?;
    if first < 1024 || last <= first {
        return Err(bad());
    }
    Ok((first, last))
}

impl RelayFile {
    /// The relay to run, if enabled; `listen` gives the default address.
    pub fn settings(&self, listen: &[Listen]) -> Result<Option<RelayConfig>, RelayConfigError> {
        if !self.enabled.unwrap_or(false) {
            return Ok(None);
        }
        let ports = self
            .ports
            .as_deref()
            .map_or(Ok(DEFAULT_PORTS), parse_ports)?;
        let address = self
            .address
            .or_else(|| listen.first().map(|l| l.addr.ip()))
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        if address.is_unspecified() || address.is_multicast() {
            return Err(RelayConfigError::Address(address));
        }
        Ok(Some(RelayConfig {
            settings: RelaySettings {
                address,
                ports,
                inactivity: self
                    .inactivity_s
                    .map_or(DEFAULT_INACTIVITY, |s| Duration::from_secs(s.max(1))),
            },
            audio: self.audio.unwrap_or(false),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> RelayFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_by_default_and_defaults_when_on() {
        assert_eq!(RelayFile::default().settings(&[]), Ok(None));
        let listen = [sip_net::Listen {
            transport: sip_core::transport::Transport::Udp,
            addr: "192.0.2.7:5060".parse().unwrap(),
        }];
        let c = file("enabled = true").settings(&listen).unwrap().unwrap();
        assert_eq!(c.settings.address, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(c.settings.ports, (40_000, 40_999));
        assert_eq!(c.settings.inactivity, Duration::from_mins(1));
        assert!(!c.audio);
    }

    #[test]
    fn reads_every_key_and_refuses_bad_ones() {
        let c = file(
            "enabled = true\nports = \"50000-50099\"\naddress = \"::1\"\ninactivity_s = 5\naudio = true",
        )
        .settings(&[])
        .unwrap()
        .unwrap();
        assert_eq!(c.settings.ports, (50_000, 50_099));
        assert_eq!(c.settings.address, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.settings.inactivity, Duration::from_secs(5));
        assert!(c.audio);
        for bad in ["50000", "500-600", "6000-5000", "x-y", "40000-70000"] {
            let f = file(&format!("enabled = true\nports = \"{bad}\""));
            assert!(
                matches!(f.settings(&[]), Err(RelayConfigError::Ports(_))),
                "{bad}"
            );
        }
        let f = file("enabled = true\naddress = \"0.0.0.0\"");
        assert!(matches!(f.settings(&[]), Err(RelayConfigError::Address(_))));
        assert!(toml::from_str::<RelayFile>("enabled = true\nport = \"1-2\"").is_err());
    }
}
