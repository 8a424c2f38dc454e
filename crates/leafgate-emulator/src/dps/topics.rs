//! DPS's MQTT topics (`iothub-protocol.md` 9a): the two requests a device publishes, the one
//! filter it subscribes, and the response topic.

/// The one filter a DPS client subscribes to.
pub(crate) const RESPONSE_FILTER: &str = "$dps/registrations/res/#";

const REGISTER: &str = "$dps/registrations/PUT/iotdps-register/";
const POLL: &str = "$dps/registrations/GET/iotdps-get-operationstatus/";
/// Longest request id or operation id accepted.
const MAX_ID: usize = 256;

/// A request a device published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    /// `…/PUT/iotdps-register/?$rid={rid}`.
    Register { rid: &'a str },
    /// `…/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}`.
    Poll { rid: &'a str, operation_id: &'a str },
}

/// A request or operation id that is safe to echo in a topic.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && !id
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '#' | '+' | '&' | '?'))
}

/// The request `topic` names; `None` for any other topic, or a missing or malformed id (which
/// closes the connection, as an unknown topic does).
pub(crate) fn parse(topic: &str) -> Option<Request<'_>> {
    let (path, query) = topic.split_once('?')?;
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .filter(|value| valid_id(value))
    };
    let rid = param("$rid")?;
    match path {
        REGISTER => Some(Request::Register { rid }),
        POLL => Some(Request::Poll {
            rid,
            operation_id: param("operationId")?,
        }),
        _ => None,
    }
}

/// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`.
pub(crate) fn response(status: u16, rid: &str, retry_after_s: Option<u32>) -> String {
    match retry_after_s {
        Some(seconds) => {
            format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={seconds}")
        }
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_register_and_poll_and_nothing_else() {
        assert_eq!(
            parse("$dps/registrations/PUT/iotdps-register/?$rid=1"),
            Some(Request::Register { rid: "1" })
        );
        assert_eq!(
            parse("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.a.b-c"),
            Some(Request::Poll {
                rid: "2",
                operation_id: "4.a.b-c"
            })
        );
        // Parameters in either order.
        assert_eq!(
            parse("$dps/registrations/GET/iotdps-get-operationstatus/?operationId=x&$rid=3"),
            Some(Request::Poll {
                rid: "3",
                operation_id: "x"
            })
        );
        for bad in [
            "$dps/registrations/PUT/iotdps-register/",
            "$dps/registrations/PUT/iotdps-register/?$rid=",
            "$dps/registrations/PUT/iotdps-register/?rid=1",
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2",
            "$dps/registrations/PUT/iotdps-other/?$rid=1",
            "$iothub/twin/GET/?$rid=1",
            "$dps/registrations/PUT/iotdps-register/?$rid=a/b",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn responses_carry_retry_after_when_given() {
        assert_eq!(
            response(202, "7", Some(3)),
            "$dps/registrations/res/202/?$rid=7&retry-after=3"
        );
        assert_eq!(
            response(200, "7", None),
            "$dps/registrations/res/200/?$rid=7"
        );
    }
}
