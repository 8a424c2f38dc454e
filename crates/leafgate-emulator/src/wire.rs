//! What a client put on the wire, kept for comparing clients field by field (compat tests hold
//! leafgate's CONNECT and SUBSCRIBE next to the Azure IoT SDK's, `iothub-protocol.md` 1.2).
//!
//! A CONNECT is reduced to a [`ConnectRecord`] before it is stored: everything but the password
//! is kept as received, and the password (a SAS token) only as its [`TokenShape`], the token with
//! its signature reduced to length and escape style. No key, signature or password text is kept.

use rumqttc::mqttbytes::Protocol;
use rumqttc::mqttbytes::v4::Connect;

use crate::sas::{self, TokenError};

/// The fields of one CONNECT as the emulator received it, password reduced to its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRecord {
    /// 4 for MQTT 3.1.1, 5 for MQTT 5.
    pub protocol_level: u8,
    pub client_id: String,
    pub username: Option<String>,
    /// `None` without a password; otherwise the token's shape, or why it is not a SAS token.
    pub password: Option<Result<TokenShape, TokenError>>,
    pub keep_alive_s: u16,
    pub clean_session: bool,
    /// The will's topic and QoS, when the CONNECT carried one.
    pub will: Option<(String, u8)>,
    /// The TLS version the connection negotiated (`TLSv1_2`, `TLSv1_3`), set by the listener.
    pub tls_version: Option<String>,
    /// Which listener the CONNECT came through, set by the listener.
    pub transport: DeviceTransport,
    /// Whether the TLS handshake carried a client certificate (X.509 devices present one; SAS
    /// devices normally do not), set by the listener.
    pub client_cert: bool,
}

/// The device endpoints a CONNECT can arrive on (`iothub-protocol.md` 1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceTransport {
    /// MQTT over TLS, the hub's port 8883 ([`crate::Emulator::mqtt_addr`]).
    #[default]
    Mqtt,
    /// MQTT over WebSockets over TLS, the hub's `wss://{host}:443/$iothub/websocket`
    /// ([`crate::Emulator::ws_addr`]).
    WebSocket,
}

impl DeviceTransport {
    /// `"mqtt"` or `"websocket"`, for logs and JSON.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceTransport::Mqtt => "mqtt",
            DeviceTransport::WebSocket => "websocket",
        }
    }
}

/// A SAS token's format without its secret part: field names in order, `sr`, `se` and `skn` as
/// they appear (none is secret), and the signature's length and escape style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenShape {
    /// `sr`, `sig`, `se`, `skn` (and any unknown names) in the order the token has them.
    pub fields: Vec<String>,
    /// `sr` exactly as it appears (still percent-encoded).
    pub sr: String,
    pub se: u64,
    pub skn: Option<String>,
    /// Bytes the base64 signature decodes to (32 for HMAC-SHA256); `None` if it does not decode.
    pub sig_bytes: Option<usize>,
    /// How `%XX` escapes in `sig` are written.
    pub sig_escapes: Escapes,
}

/// The case of the hex digits in a string's percent escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// No escapes at all (e.g. a signature sent unencoded).
    None,
    /// `%2B`, as the Python, Node and .NET SDKs write them.
    Upper,
    /// `%2b`, as the C SDK writes them.
    Lower,
    /// Both, or only digits (`%20` says nothing about case).
    Mixed,
}

impl ConnectRecord {
    #[must_use]
    pub fn new(connect: &Connect) -> Self {
        ConnectRecord {
            protocol_level: match connect.protocol {
                Protocol::V4 => 4,
                Protocol::V5 => 5,
            },
            client_id: connect.client_id.clone(),
            username: connect.login.as_ref().map(|l| l.username.clone()),
            password: connect
                .login
                .as_ref()
                .filter(|l| !l.password.is_empty())
                .map(|l| TokenShape::of(&l.password)),
            keep_alive_s: connect.keep_alive,
            clean_session: connect.clean_session,
            will: connect
                .last_will
                .as_ref()
                .map(|will| (will.topic.clone(), will.qos as u8)),
            tls_version: None,
            transport: DeviceTransport::Mqtt,
            client_cert: false,
        }
    }
}

impl TokenShape {
    /// The shape of `token`.
    ///
    /// # Errors
    /// When it is not a `SharedAccessSignature` token with `sr`, `sig` and a numeric `se`.
    pub fn of(token: &str) -> Result<TokenShape, TokenError> {
        let parsed = sas::parse(token)?;
        let fields = token
            .strip_prefix("SharedAccessSignature ")
            .unwrap_or_default()
            .split('&')
            .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k).to_owned())
            .collect();
        let sig_bytes = sas::percent_decode(&parsed.sig).and_then(|sig| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(sig)
                .ok()
                .map(|bytes| bytes.len())
        });
        Ok(TokenShape {
            fields,
            sig_escapes: escapes(&parsed.sig),
            sr: parsed.sr,
            se: parsed.se,
            skn: parsed.skn,
            sig_bytes,
        })
    }
}

/// The case of the escapes in `text`.
#[must_use]
pub fn escapes(text: &str) -> Escapes {
    let (mut upper, mut lower, mut any) = (false, false, false);
    for escape in text.split('%').skip(1) {
        any = true;
        for c in escape.chars().take(2) {
            upper |= c.is_ascii_uppercase();
            lower |= c.is_ascii_lowercase();
        }
    }
    match (any, upper, lower) {
        (false, _, _) => Escapes::None,
        (true, true, false) => Escapes::Upper,
        (true, false, true) => Escapes::Lower,
        _ => Escapes::Mixed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::LastWill;

    const SDK_FORM: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-1&sig=MfFYU5%2BKiABdLama69LZEWjP7TkC4MNVBPKHFNWquuo%3D&se=1767225600";
    const C_FORM: &str = "SharedAccessSignature sr=myhub.azure-devices.net/devices/dev-1&sig=ewy7BYbQtk7z4phPE1StE5B%2bJc%2bvfpBBs5ewLmOkf%2f8%3d&se=1767225600";

    #[test]
    fn token_shapes_keep_everything_but_the_signature() {
        let shape = TokenShape::of(SDK_FORM).unwrap();
        assert_eq!(shape.fields, ["sr", "sig", "se"]);
        assert_eq!(shape.sr, "myhub.azure-devices.net%2Fdevices%2Fdev-1");
        assert_eq!((shape.se, shape.skn.as_deref()), (1_767_225_600, None));
        assert_eq!(shape.sig_bytes, Some(32));
        assert_eq!(shape.sig_escapes, Escapes::Upper);
        assert!(!format!("{shape:?}").contains("MfFYU5"));

        let c = TokenShape::of(C_FORM).unwrap();
        assert_eq!(c.sr, "myhub.azure-devices.net/devices/dev-1");
        assert_eq!((c.sig_bytes, c.sig_escapes), (Some(32), Escapes::Lower));

        let node = TokenShape::of("SharedAccessSignature sr=h&sig=YQ==&skn=service&se=5").unwrap();
        assert_eq!(node.fields, ["sr", "sig", "skn", "se"]);
        assert_eq!((node.sig_escapes, node.sig_bytes), (Escapes::None, Some(1)));
        assert_eq!(node.skn.as_deref(), Some("service"));
        assert_eq!(TokenShape::of("hunter2"), Err(TokenError::Prefix));
    }

    #[test]
    fn escape_case_is_classified() {
        assert_eq!(escapes("a%2Fb%3D"), Escapes::Upper);
        assert_eq!(escapes("a%2fb"), Escapes::Lower);
        assert_eq!(escapes("%2F%2f"), Escapes::Mixed);
        assert_eq!(escapes("%20"), Escapes::Mixed);
        assert_eq!(escapes("plain"), Escapes::None);
    }

    #[test]
    fn records_connect_fields_without_the_password_text() {
        let mut connect = Connect::new("dev-1");
        connect.keep_alive = 60;
        connect.clean_session = false;
        connect.set_login("h/dev-1/?api-version=2019-10-01", SDK_FORM);
        connect.last_will = Some(LastWill::new(
            "devices/dev-1/messages/events/",
            "bye",
            QoS::AtLeastOnce,
            false,
        ));
        let record = ConnectRecord::new(&connect);
        assert_eq!(record.protocol_level, 4);
        assert_eq!(record.client_id, "dev-1");
        assert_eq!(
            record.username.as_deref(),
            Some("h/dev-1/?api-version=2019-10-01")
        );
        assert_eq!((record.keep_alive_s, record.clean_session), (60, false));
        assert_eq!(
            record.will,
            Some(("devices/dev-1/messages/events/".to_owned(), 1))
        );
        assert!(matches!(record.password, Some(Ok(_))));
        assert!(!format!("{record:?}").contains("sig=MfFYU5"));
        assert_eq!(ConnectRecord::new(&Connect::new("x")).password, None);
    }
}
