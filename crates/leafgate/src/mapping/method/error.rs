//! What can go wrong with a method, one type per party at fault: the config (found at load), the
//! caller (400) and the hardware (502). Kept apart from the code that raises them because
//! `mapping::status` and `mapping::raw` raise and map them too.

/// A config problem found while compiling, with the dotted path of the offending key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The caller sent something this method cannot take (status 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub field: Option<String>,
    pub message: String,
}

impl RequestError {
    pub fn new(field: Option<&str>, message: impl Into<String>) -> Self {
        RequestError {
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// The hardware's answer could not be turned into a reply (status 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplyError(pub String);
