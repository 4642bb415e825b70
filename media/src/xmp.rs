//! The run's graph inside an XMP packet, for formats without PNG's text chunks (GIF, WebP).
//!
//! The graph JSON is the text of one `latentflow:graph` property, XML-escaped; [`graph`] finds it
//! again in any packet, ignoring everything else there.

/// The XML namespace of our properties.
pub const NAMESPACE: &str = "https://latentflow.dev/ns/1.0/";

const OPEN: &str = "<latentflow:graph>";
const CLOSE: &str = "</latentflow:graph>";

/// An XMP packet holding `graph`.
pub fn packet(graph: &str) -> String {
    let mut text = String::with_capacity(graph.len() + 512);
    for c in graph.chars() {
        match c {
            '&' => text.push_str("&amp;"),
            '<' => text.push_str("&lt;"),
            '>' => text.push_str("&gt;"),
            c => text.push(c),
        }
    }
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\
         <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description rdf:about=\"\" xmlns:latentflow=\"{NAMESPACE}\">\
         {OPEN}{text}{CLOSE}\
         </rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end=\"r\"?>"
    )
}

/// The graph inside an XMP packet, if it holds one.
pub fn graph(xmp: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(xmp).ok()?;
    let start = text.find(OPEN)? + OPEN.len();
    let len = text[start..].find(CLOSE)?;
    Some(unescape(&text[start..start + len]))
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let entity = [
            ("&amp;", '&'),
            ("&lt;", '<'),
            ("&gt;", '>'),
            ("&quot;", '"'),
            ("&apos;", '\''),
        ]
        .into_iter()
        .find(|(e, _)| rest.starts_with(e));
        match entity {
            Some((e, c)) => {
                out.push(c);
                rest = &rest[e.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_survives_the_packet() {
        let g = r#"{"graph": {"a": "<b> & </latentflow:graph> ü"}}"#;
        let p = packet(g);
        assert!(!p.as_bytes().contains(&0));
        assert_eq!(graph(p.as_bytes()).as_deref(), Some(g));
        assert_eq!(graph(b"<x:xmpmeta/>"), None);
        assert_eq!(unescape("a &unknown; &amp;b"), "a &unknown; &b");
    }
}
