//! The record of a DPS CONNECT or request, kept in the emulator's history for tests
//! ([`Emulator::dps_requests`](crate::Emulator::dps_requests)).

use tokio::time::Instant;

use crate::registry::RefusalReason;

/// What a DPS request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpsRequestKind {
    /// A CONNECT to DPS; its `status` is the CONNACK return code (0, or 5 and `refusal`).
    Connect,
    /// `$dps/registrations/PUT/iotdps-register/`.
    Register,
    /// `$dps/registrations/GET/iotdps-get-operationstatus/`.
    Poll,
}

/// One request a device made to DPS, recorded before it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsRequest {
    pub at: Instant,
    /// The registration id of the connection (for a CONNECT, its client id).
    pub registration_id: String,
    pub kind: DpsRequestKind,
    /// The status answered (`200`, `202`, `400`, `404`, `429`), or for a CONNECT the CONNACK
    /// return code.
    pub status: u16,
    /// The operation registered or polled, when there is one.
    pub operation_id: Option<String>,
    /// Why a CONNECT was refused (never a key or a token).
    pub refusal: Option<RefusalReason>,
}
