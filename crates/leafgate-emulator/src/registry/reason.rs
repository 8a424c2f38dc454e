//! Why a CONNECT was refused and why a connection ended. Tests assert on these, so the CONNECT
//! checks, the connection tasks, the registry and the history all report in this one vocabulary.

use crate::sas::TokenError;

/// Why a CONNECT was refused. The hub answers CONNACK 5 for all of these except
/// [`RefusalReason::ProtocolVersion`] (CONNACK 1) and [`RefusalReason::Throttled`] (CONNACK 3); the reason itself only exists here, for tests.
/// Never carries the key or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    #[error("protocol level {0} is not MQTT 3.1.1 (4)")]
    ProtocolVersion(u8),
    #[error("client id is empty")]
    EmptyClientId,
    #[error("CONNECT carries no username")]
    MissingUsername,
    #[error("username is not {{host}}/{{deviceId}}/?api-version=...")]
    BadUsername,
    #[error("username names another hub host")]
    WrongHost,
    #[error("username has no api-version")]
    MissingApiVersion,
    #[error("module identities are not emulated")]
    ModuleIdentity,
    #[error("username device id differs from the client id")]
    ClientIdMismatch,
    #[error("device is not registered")]
    UnknownDevice,
    #[error("device is disabled")]
    DeviceDisabled,
    /// A SAS device's CONNECT without a password (whether or not the handshake carried a
    /// client certificate: the device is not registered for X.509).
    #[error("CONNECT carries no password, and the device authenticates with a SAS token")]
    MissingPassword,
    /// An X.509 device's CONNECT with a password: it must authenticate with its certificate.
    #[error("the device authenticates with X.509, but CONNECT carries a password")]
    PasswordForX509Device,
    #[error(
        "the device authenticates with X.509, but the TLS handshake carried no client certificate"
    )]
    MissingClientCertificate,
    #[error("the client certificate does not parse")]
    BadClientCertificate,
    #[error("the client certificate's thumbprint matches neither registered thumbprint")]
    ThumbprintMismatch,
    /// The chain does not verify against a CA added with
    /// [`Emulator::add_verified_ca`](crate::Emulator::add_verified_ca) (the text says why).
    #[error("the client certificate chain does not verify against a verified CA: {0}")]
    CertificateNotTrusted(String),
    #[error("the client certificate's subject CN is not the device id")]
    CommonNameMismatch,
    #[error("the client certificate has expired")]
    CertificateExpired,
    #[error("the client certificate is not valid yet")]
    CertificateNotYetValid,
    #[error("shared access policy tokens (skn) are not accepted for device connections")]
    PolicyToken,
    #[error("sas token rejected: {0}")]
    Token(TokenError),
    /// DPS: the username is not `{idScope}/registrations/{registrationId}/api-version=...`.
    #[error("username is not {{idScope}}/registrations/{{registrationId}}/api-version=...")]
    BadDpsUsername,
    /// DPS: the username names another ID scope than this DPS instance's.
    #[error("username names another DPS id scope")]
    WrongIdScope,
    /// DPS: the registration id breaks DPS's rules (at most 128 of `a-z A-Z 0-9 - . _ :`, no
    /// special character first or last).
    #[error("registration id is not a valid DPS registration id")]
    BadRegistrationId,
    /// DPS: no individual enrollment and no group enrollment for this registration id.
    #[error("no enrollment for this registration id")]
    UnknownRegistration,
    /// A [`Fault::Refuse`](crate::Fault::Refuse) injected by a test (CONNACK 5).
    #[error("refused by an injected fault")]
    Injected,
    /// A [`Fault::Throttle`](crate::Fault::Throttle) injected by a test: CONNACK 3 (server
    /// unavailable), as a throttled hub answers.
    #[error("hub is throttling connections (injected fault)")]
    Throttled,
}

/// Why a device connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    #[error("client sent DISCONNECT")]
    ClientDisconnect,
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("no packet within 1.5 x keep-alive")]
    KeepAliveTimeout,
    #[error("sas token expired")]
    TokenExpired,
    #[error("a newer connection for the same device id took over")]
    TakenOver,
    #[error("device was removed from the registry")]
    DeviceRemoved,
    #[error("device was disabled")]
    DeviceDisabled,
    #[error("dropped by drop_all_connections")]
    Dropped,
    /// A [`Fault::DropBeforePuback`](crate::Fault::DropBeforePuback) struck: the message was
    /// recorded, its PUBACK never sent.
    #[error("closed after a telemetry publish, before its PUBACK (injected fault)")]
    DroppedBeforePuback,
    /// A [`Fault::QuotaExceeded`](crate::Fault::QuotaExceeded) struck: the message was not
    /// recorded.
    #[error("telemetry refused: the hub's message quota is used up (injected fault)")]
    QuotaExceeded,
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
    /// A publish to a feature the emulator does not serve. Every hub topic a device may publish
    /// to is served today (twins since they were emulated), so nothing produces this; kept for
    /// features to come.
    #[error("{0} is not emulated")]
    NotEmulated(String),
    #[error("emulator shut down")]
    Shutdown,
}
