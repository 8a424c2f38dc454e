//! Device connection strings as the Azure portal shows them (`iothub-protocol.md` 9).
//!
//! `HostName=...;DeviceId=...;SharedAccessKey=...[;GatewayHostName=...]`, split on `;` and then on
//! the first `=` only, since base64 keys end in `=` padding. Key names are case-sensitive.

use super::sas::{Key, KeyError};

/// What leafgate needs from a device connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub device_id: String,
    pub key: Key,
    pub gateway_host_name: Option<String>,
}

/// Why a connection string was refused. Messages never include the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("connection string part {0} is not of the form Name=value")]
    Malformed(usize),
    #[error("connection string lacks {0}")]
    Missing(&'static str),
    #[error("connection string names {0} more than once")]
    Duplicate(String),
    #[error("connection string uses {0}, which leafgate does not support (use SharedAccessKey)")]
    Unsupported(&'static str),
    #[error("connection string has unknown part {0}")]
    Unknown(String),
    #[error("connection string SharedAccessKey: {0}")]
    Key(#[from] KeyError),
}

impl std::str::FromStr for ConnectionString {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let (mut host, mut device, mut key, mut gateway) = (None, None, None, None);
        for (index, part) in text.trim().split(';').enumerate() {
            if part.is_empty() {
                continue;
            }
            let (name, value) = part.split_once('=').ok_or(Error::Malformed(index + 1))?;
            let slot = match name {
                "HostName" => &mut host,
                "DeviceId" => &mut device,
                "SharedAccessKey" => &mut key,
                "GatewayHostName" => &mut gateway,
                "ModuleId" => return Err(Error::Unsupported("ModuleId")),
                "x509" => return Err(Error::Unsupported("x509")),
                "SharedAccessSignature" => return Err(Error::Unsupported("SharedAccessSignature")),
                "SharedAccessKeyName" => {
                    return Err(Error::Unsupported(
                        "SharedAccessKeyName (a service policy, not a device)",
                    ));
                }
                other => return Err(Error::Unknown(other.to_owned())),
            };
            if slot.replace(value).is_some() {
                return Err(Error::Duplicate(name.to_owned()));
            }
        }
        let host_name = host
            .filter(|h| !h.is_empty())
            .ok_or(Error::Missing("HostName"))?;
        let device_id = device
            .filter(|d| !d.is_empty())
            .ok_or(Error::Missing("DeviceId"))?;
        let key = Key::from_base64(key.ok_or(Error::Missing("SharedAccessKey"))?)?;
        Ok(ConnectionString {
            host_name: host_name.to_owned(),
            device_id: device_id.to_owned(),
            key,
            gateway_host_name: gateway.filter(|g| !g.is_empty()).map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn parses_portal_strings_with_padding_and_gateway() {
        let cs: ConnectionString =
            format!("HostName=h.azure-devices.net;DeviceId=pump-1;SharedAccessKey={KEY};GatewayHostName=edge")
                .parse()
                .unwrap();
        assert_eq!(cs.host_name, "h.azure-devices.net");
        assert_eq!(cs.device_id, "pump-1");
        assert_eq!(cs.key, Key::from_base64(KEY).unwrap());
        assert_eq!(cs.gateway_host_name.as_deref(), Some("edge"));
    }

    #[test]
    fn rejects_bad_strings_without_echoing_the_key() {
        let cases = [
            (
                "DeviceId=d;SharedAccessKey=AA==",
                Error::Missing("HostName"),
            ),
            (
                "HostName=h;SharedAccessKey=AA==",
                Error::Missing("DeviceId"),
            ),
            ("HostName=h;DeviceId=d", Error::Missing("SharedAccessKey")),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=!!",
                Error::Key(KeyError::NotBase64),
            ),
            (
                "HostName=h;DeviceId=d;DeviceId=e;SharedAccessKey=AA==",
                Error::Duplicate("DeviceId".into()),
            ),
            (
                "HostName=h;garbage;SharedAccessKey=AA==",
                Error::Malformed(2),
            ),
            (
                "HostName=h;DeviceId=d;x509=true",
                Error::Unsupported("x509"),
            ),
            (
                "hostname=h;DeviceId=d;SharedAccessKey=AA==",
                Error::Unknown("hostname".into()),
            ),
        ];
        for (text, want) in cases {
            let err = text.parse::<ConnectionString>().unwrap_err();
            assert_eq!(err, want, "{text}");
            assert!(!err.to_string().contains("AA=="));
        }
    }
}
