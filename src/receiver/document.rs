//! A pushed body (XML, or JSON for mini programs set to JSON) as a small tree of named text
//! nodes: all the push types need. XML is read with `quick-xml`, which expands no entities; a
//! body with a DOCTYPE (where entities are declared: "billion laughs", external entities) or a
//! reference to any entity but XML's five and character references is refused outright. Bodies
//! are bounded by the HTTP layer (64 KiB); nesting is bounded here.

use quick_xml::Reader;
use quick_xml::events::{BytesDecl, BytesRef, BytesStart, Event};

/// Deeper than any push WeChat sends (`xml` / `SubscribeMsgSentEvent` / `List` / field).
const MAX_DEPTH: usize = 8;
/// More elements than any push WeChat sends (a subscribe result lists a handful).
const MAX_NODES: usize = 2_000;

/// An element: its name, its text (CDATA and text joined) and its child elements in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Node {
    pub name: String,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    /// The first child called `name`.
    pub(crate) fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child called `name`.
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of the first child called `name`, if any and not empty.
    pub(crate) fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim()).filter(|t| !t.is_empty())
    }
}

/// Why a body is not a document we read. None of these carries the body's text.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DocumentError {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the XML declares an encoding other than UTF-8")]
    Encoding,
    #[error("a DOCTYPE (entity declarations are refused)")]
    Doctype,
    #[error("a reference to an undeclared entity")]
    Entity,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("the XML ends before its root element does")]
    Truncated,
    #[error("the root element is not <xml>")]
    Root,
    #[error("nested deeper than {MAX_DEPTH} or more than {MAX_NODES} elements")]
    TooBig,
    #[error("malformed JSON")]
    Json,
}

/// Reads a body: JSON when it starts with `{`, XML otherwise.
pub(crate) fn parse(body: &[u8]) -> Result<Node, DocumentError> {
    let text = std::str::from_utf8(body).map_err(|_| DocumentError::NotUtf8)?;
    let text = text.trim_start_matches('\u{feff}');
    if text.trim_start().starts_with('{') {
        parse_json(text)
    } else {
        parse_xml(text)
    }
}

pub(crate) fn parse_xml(text: &str) -> Result<Node, DocumentError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| DocumentError::Xml(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(DocumentError::Doctype),
            Event::Decl(decl) => check_encoding(&decl)?,
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(DocumentError::Xml("content after the root element".into()));
            }
            Event::Start(start) => {
                nodes += 1;
                if stack.len() >= MAX_DEPTH || nodes > MAX_NODES {
                    return Err(DocumentError::TooBig);
                }
                stack.push(element(&start));
            }
            Event::Empty(start) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(DocumentError::TooBig);
                }
                close(&mut stack, &mut root, element(&start));
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| DocumentError::Xml("an end tag with no start".into()))?;
                close(&mut stack, &mut root, node);
            }
            Event::Text(t) => append(&mut stack, &t.xml10_content())?,
            Event::CData(t) => append(&mut stack, &t.xml10_content())?,
            Event::GeneralRef(r) => append(&mut stack, &resolve(&r)?)?,
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(DocumentError::Truncated);
    }
    let root = root.ok_or(DocumentError::Truncated)?;
    if root.name != "xml" {
        return Err(DocumentError::Root);
    }
    Ok(root)
}

/// An XML declaration may name no encoding but UTF-8.
fn check_encoding(decl: &BytesDecl<'_>) -> Result<(), DocumentError> {
    if let Some(enc) = decl.encoding() {
        let enc = enc.map_err(|e| DocumentError::Xml(e.to_string()))?;
        if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
            return Err(DocumentError::Encoding);
        }
    }
    Ok(())
}

/// A new element, named as its tag, with no text or children yet.
fn element(start: &BytesStart<'_>) -> Node {
    Node {
        name: start.name().as_ref().to_string(),
        ..Node::default()
    }
}

/// The text of a reference: a character reference or one of XML's five entities; any other
/// entity is refused.
fn resolve(r: &BytesRef<'_>) -> Result<String, DocumentError> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => Ok(c.to_string()),
        Ok(None) => Ok(quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
            .ok_or(DocumentError::Entity)?
            .to_string()),
        Err(e) => Err(DocumentError::Xml(e.to_string())),
    }
}

/// Attaches a finished element to its parent, or makes it the root.
fn close(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

/// Text belongs to the open element; outside the root only white space may stand.
fn append(stack: &mut [Node], text: &str) -> Result<(), DocumentError> {
    match stack.last_mut() {
        Some(node) => {
            node.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(DocumentError::Xml("text outside the root element".into())),
    }
}

/// JSON pushes: an object becomes the `xml` root; a key's array becomes repeated children of
/// that name (so `List` reads the same whether it is one object or an array); numbers keep their
/// exact digits (a MsgID above 2^53 never goes through f64).
pub(crate) fn parse_json(text: &str) -> Result<Node, DocumentError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| DocumentError::Json)?;
    if !value.is_object() {
        return Err(DocumentError::Json);
    }
    let mut nodes = 0;
    json_node("xml", &value, 0, &mut nodes)
}

fn json_node(name: &str, value: &serde_json::Value, depth: usize, nodes: &mut usize) -> Result<Node, DocumentError> {
    use serde_json::Value;
    *nodes += 1;
    if depth > MAX_DEPTH || *nodes > MAX_NODES {
        return Err(DocumentError::TooBig);
    }
    let mut node = Node {
        name: name.to_string(),
        ..Node::default()
    };
    match value {
        Value::Null => {}
        Value::Bool(b) => node.text = b.to_string(),
        Value::Number(n) => node.text = n.to_string(),
        Value::String(s) => node.text = s.clone(),
        Value::Array(_) => return Err(DocumentError::Json),
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::Array(items) => {
                        for item in items {
                            node.children.push(json_node(key, item, depth + 1, nodes)?);
                        }
                    }
                    other => node.children.push(json_node(key, other, depth + 1, nodes)?),
                }
            }
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cdata_text_and_repeated_children() {
        let doc = parse(
            b"<?xml version=\"1.0\" encoding=\"utf-8\"?><xml><A><![CDATA[x<y]]></A><B>1 &amp; 2 &#20013;</B>\
              <L><M>1</M></L><L><M>2</M></L><E/></xml>",
        )
        .unwrap();
        assert_eq!(doc.text_of("A"), Some("x<y"));
        assert_eq!(doc.text_of("B"), Some("1 & 2 中"));
        assert_eq!(doc.all("L").count(), 2);
        assert_eq!(doc.text_of("E"), None);
    }

    #[test]
    fn refuses_entity_declarations_and_unknown_entities() {
        let laughs = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><xml><A>&lol2;</A></xml>"#;
        assert_eq!(parse(laughs), Err(DocumentError::Doctype));
        let external = br#"<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><A>&xxe;</A></xml>"#;
        assert_eq!(parse(external), Err(DocumentError::Doctype));
        assert_eq!(parse(b"<xml><A>&xxe;</A></xml>"), Err(DocumentError::Entity));
    }

    #[test]
    fn refuses_truncated_misnested_and_foreign_encodings() {
        assert_eq!(parse(b"<xml><A>1</A>"), Err(DocumentError::Truncated));
        assert!(matches!(parse(b"<xml><A>1</B></xml>"), Err(DocumentError::Xml(_))));
        assert_eq!(
            parse(b"<?xml version=\"1.0\" encoding=\"GBK\"?><xml/>"),
            Err(DocumentError::Encoding)
        );
        assert_eq!(parse(b"<xml>\xff\xfe</xml>"), Err(DocumentError::NotUtf8));
        assert_eq!(parse(b"<root/>"), Err(DocumentError::Root));
        assert_eq!(parse(b""), Err(DocumentError::Truncated));
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(20), "</a>".repeat(20));
        assert_eq!(parse(deep.as_bytes()), Err(DocumentError::TooBig));
    }

    #[test]
    fn json_arrays_become_repeated_children_and_numbers_keep_their_digits() {
        let doc = parse(br#"{"A": 12345678901234567890, "L": [{"M": 1}, {"M": 2}], "O": {"M": 3}}"#).unwrap();
        assert_eq!(doc.text_of("A"), Some("12345678901234567890"));
        assert_eq!(doc.all("L").count(), 2);
        assert_eq!(doc.child("O").and_then(|o| o.text_of("M")), Some("3"));
        assert_eq!(parse(b"{\"A\": "), Err(DocumentError::Json));
    }
}
