//! BODY and BODYSTRUCTURE (RFC 3501 §7.4.2) from storage's MIME tree.

use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData, SinglePartExtensionData,
    SpecificFields,
};
use imap_codec::imap_types::core::{IString, NString, Vec1};
use mailfleet_proto::storage::v1 as pb;

use super::fetch::envelope;

fn istr(s: &str) -> IString<'static> {
    IString::try_from(s.to_string())
        .or_else(|_| IString::try_from(s.replace(['\0', '\r', '\n'], " ")))
        .unwrap_or_else(|_| IString::try_from("").expect("empty string is a valid quoted string"))
}

fn nstr(s: Option<&str>) -> NString<'static> {
    NString(s.map(istr))
}

fn params(list: &[pb::Param]) -> Vec<(IString<'static>, IString<'static>)> {
    list.iter().map(|p| (istr(&p.name.to_ascii_uppercase()), istr(&p.value))).collect()
}

/// `body-fld-dsp`, `body-fld-lang`, `body-fld-loc` (RFC 3501 §9).
fn disposition(part: &pb::BodyPart) -> Disposition<'static> {
    Disposition {
        disposition: part
            .disposition
            .as_deref()
            .map(|d| (istr(&d.to_ascii_uppercase()), params(&part.disposition_params))),
        tail: Some(Language {
            language: part.language.iter().map(|l| istr(l)).collect(),
            tail: Some(Location { location: nstr(part.location.as_deref()), extensions: vec![] }),
        }),
    }
}

/// The structure of `part`; `extended` adds the extension data that
/// BODYSTRUCTURE carries and BODY does not.
pub fn body_structure(part: &pb::BodyPart, extended: bool) -> BodyStructure<'static> {
    let media_type = part.media_type.to_ascii_uppercase();
    let subtype = part.media_subtype.to_ascii_uppercase();
    if media_type == "MULTIPART"
        && let Ok(bodies) = Vec1::try_from(part.parts.iter().map(|p| body_structure(p, extended)).collect::<Vec<_>>())
    {
        return BodyStructure::Multi {
            bodies,
            subtype: istr(&subtype),
            extension_data: extended.then(|| MultiPartExtensionData {
                parameter_list: params(&part.params),
                tail: Some(disposition(part)),
            }),
        };
    }
    let basic = BasicFields {
        parameter_list: params(&part.params),
        id: nstr(part.id.as_deref()),
        description: nstr(part.description.as_deref()),
        content_transfer_encoding: istr(if part.encoding.is_empty() { "7BIT" } else { &part.encoding }),
        size: part.size.min(u64::from(u32::MAX)) as u32,
    };
    let specific = match (media_type.as_str(), subtype.as_str(), &part.message_body) {
        ("TEXT", _, _) => SpecificFields::Text { subtype: istr(&subtype), number_of_lines: part.lines },
        ("MESSAGE", "RFC822" | "GLOBAL", Some(inner)) => SpecificFields::Message {
            envelope: Box::new(envelope(part.message_envelope.as_ref().unwrap_or(&pb::Envelope::default()))),
            body_structure: Box::new(body_structure(inner, extended)),
            number_of_lines: part.lines,
        },
        _ => SpecificFields::Basic {
            r#type: istr(if media_type.is_empty() { "APPLICATION" } else { &media_type }),
            subtype: istr(if subtype.is_empty() { "OCTET-STREAM" } else { &subtype }),
        },
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: extended
            .then(|| SinglePartExtensionData { md5: nstr(part.md5.as_deref()), tail: Some(disposition(part)) }),
    }
}
