//! Compiling a `send` step, the one step a plain serial instrument understands: a request
//! template (or fixed bytes), the params it may use, and the pattern its reply must match. Kept
//! apart from the Modbus steps because none of their keys apply here and none of these there.

use regex::Regex;

use super::error::Problem;
use super::hex::parse_hex;
use super::{Input, Placed, Request, Source, Step};
use crate::mapping::schema::{Constant, DataType, ReplyKind, StepConfig};
use crate::mapping::template::Template;
use crate::mapping::value::Layout;

pub(super) fn compile_send(
    step: &StepConfig,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Step> {
    let start = problems.len();
    let request = match (&step.request, &step.request_hex) {
        (Some(t), None) => match Template::parse(t) {
            Ok(t) => Some(Request::Text(t)),
            Err(e) => {
                problems.push(Problem::new(format!("{path}.request"), e));
                None
            }
        },
        (None, Some(h)) => match parse_hex(h) {
            Ok(b) if !b.is_empty() => Some(Request::Bytes(b)),
            Ok(_) => {
                problems.push(Problem::new(format!("{path}.request_hex"), "is empty"));
                None
            }
            Err(e) => {
                problems.push(Problem::new(format!("{path}.request_hex"), e));
                None
            }
        },
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                format!("{path}.request"),
                "give request or request_hex, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(Problem::new(
                format!("{path}.request"),
                "missing (or request_hex)",
            ));
            None
        }
    };
    let mut params = Vec::new();
    for (i, p) in step.params.iter().enumerate() {
        let ppath = format!("{path}.params[{i}]");
        let Some(name) = &p.name else {
            problems.push(Problem::new(format!("{ppath}.name"), "missing"));
            continue;
        };
        let ty = p.data_type.unwrap_or(DataType::String);
        for (key, present) in [
            ("address", p.address.is_some()),
            ("bit", p.bit.is_some()),
            ("length", p.length.is_some()),
            ("word_order", p.word_order.is_some()),
            ("byte_order", p.byte_order.is_some()),
            ("scale", p.scale.is_some()),
            ("offset", p.offset.is_some()),
            ("decimals", p.decimals.is_some()),
        ] {
            if present {
                problems.push(Problem::new(
                    format!("{ppath}.{key}"),
                    "does not apply to serial params (format in the template, e.g. {volts:.3})",
                ));
            }
        }
        let mut layout = Layout::new(ty);
        layout.min = p.min;
        layout.max = p.max;
        layout.length = 128;
        let source = match &p.value {
            Some(c) => Source::Fixed(c.to_json()),
            None => Source::Payload {
                default: p.default.as_ref().map(Constant::to_json),
            },
        };
        params.push(Input {
            placed: Placed {
                name: name.clone(),
                pos: 0,
                layout,
            },
            source,
        });
    }
    if let Some(Request::Text(t)) = &request {
        for used in t.field_names() {
            if !params.iter().any(|p| p.placed.name == used) {
                problems.push(Problem::new(
                    format!("{path}.request"),
                    format!("uses {{{used}}} but no params entry names it"),
                ));
            }
        }
    }
    let expect = match &step.expect {
        Some(pattern) => match Regex::new(pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                problems.push(Problem::new(
                    format!("{path}.expect"),
                    format!("not a valid regex: {e}"),
                ));
                None
            }
        },
        None => None,
    };
    let reply = step.reply.unwrap_or(ReplyKind::Text);
    if expect.is_some() && reply != ReplyKind::Text {
        problems.push(Problem::new(
            format!("{path}.reply"),
            "expect needs reply = \"text\"",
        ));
    }
    let mut captures = Vec::new();
    for (i, f) in step.fields.iter().enumerate() {
        let fpath = format!("{path}.fields[{i}]");
        let Some(name) = &f.name else {
            problems.push(Problem::new(format!("{fpath}.name"), "missing"));
            continue;
        };
        if let Some(re) = &expect
            && !re.capture_names().flatten().any(|c| c == name)
        {
            problems.push(Problem::new(
                format!("{fpath}.name"),
                format!("expect has no named capture (?P<{name}>...)"),
            ));
        }
        captures.push((name.clone(), f.data_type.unwrap_or(DataType::String)));
    }
    if problems.len() != start {
        return None;
    }
    Some(Step::Send {
        request: request?,
        params,
        expect,
        reply,
        captures,
    })
}
