//! How a registered device proves its identity: a SAS key or an X.509 certificate. Plain data
//! kept apart from the registry that stores it and from the checks that use it (`connect`,
//! `x509`), which both import it.

use crate::sas::Key;

/// How a registered device authenticates.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    /// SAS tokens signed with this key, as the CONNECT password.
    Sas(Key),
    /// A client certificate in the TLS handshake, no password (`iothub-protocol.md` 1.6).
    X509(X509Auth),
}

/// How a device registered for X.509 proves its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum X509Auth {
    /// Self-signed (or any) certificate known by its thumbprint: hex SHA-1 (40 digits) or
    /// SHA-256 (64 digits) of the DER leaf certificate, compared without case and ignoring `:`
    /// separators (and white space), as the portal and `openssl x509 -fingerprint` write them.
    Thumbprint {
        primary: String,
        secondary: Option<String>,
    },
    /// A certificate chaining to a CA added with
    /// [`Emulator::add_verified_ca`](crate::Emulator::add_verified_ca), whose subject CN is the
    /// device id.
    CaSigned,
}
