//! Restoring a version: the live document's content becomes the version's,
//! as a new change (never a rewrite of history).
//!
//! Pure: a version's stored updates → a `yrs::Doc` ([`rebuild`]), then one
//! transaction on the live document that makes every root type's content
//! equal the version's ([`make_equal`]); its update is what the room
//! stores and sends, as any client's update.
//!
//! Root types created by remote updates have no declared type on the
//! server; each is read through yrs' own inference (`Out::as_prelim` of an
//! undefined root: keyed entries → map, text chunks → text, elements →
//! a sequence, whose XML elements and texts are copied as such, so a
//! ProseMirror / TipTap `XmlFragment` comes back as one). A root whose
//! content already equals the version's is not touched, so what did not
//! change keeps its identity (cursors and selections stay put there). In a
//! changed sequence root (array values, a fragment's paragraphs) only the
//! run between the items equal at both ends is replaced; any other changed
//! root is emptied and refilled. What is written is a deep copy of the
//! version's content: text with its formatting, maps, arrays, XML elements
//! with their attributes and children, and nested shared types.

use bytes::Bytes;
use yrs::branch::{Branch, BranchPtr};
use yrs::types::xml::XmlIn;
use yrs::types::AsPrelim;
use yrs::updates::decoder::Decode;
use yrs::{
    Array, ArrayRef, Doc, In, Map, MapRef, Out, ReadTxn, Text, TextRef, Transact, Update, Xml,
    XmlTextRef,
};

/// Rebuilds a document from a version's updates (a full state, then
/// deltas), in order.
pub fn rebuild(parts: &[Bytes]) -> Result<Doc, String> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for (i, part) in parts.iter().enumerate() {
            let update = Update::decode_v1(part)
                .map_err(|e| format!("stored update {i} unreadable: {e}"))?;
            txn.apply_update(update)
                .map_err(|e| format!("stored update {i} refused: {e}"))?;
        }
    }
    Ok(doc)
}

/// The root types of a document with their branches.
fn roots<T: ReadTxn>(txn: &T) -> Vec<(String, BranchPtr)> {
    txn.root_refs()
        .filter_map(|(name, out)| branch_of(&out).map(|b| (name.to_owned(), b)))
        .collect()
}

fn branch_of(out: &Out) -> Option<BranchPtr> {
    Some(match out {
        Out::UndefinedRef(b) => *b,
        Out::YText(t) => BranchPtr::from(AsRef::<Branch>::as_ref(t)),
        Out::YArray(a) => BranchPtr::from(AsRef::<Branch>::as_ref(a)),
        Out::YMap(m) => BranchPtr::from(AsRef::<Branch>::as_ref(m)),
        Out::YXmlFragment(f) => BranchPtr::from(AsRef::<Branch>::as_ref(f)),
        Out::YXmlElement(e) => BranchPtr::from(AsRef::<Branch>::as_ref(e)),
        Out::YXmlText(t) => BranchPtr::from(AsRef::<Branch>::as_ref(t)),
        Out::Any(_) | Out::YDoc(_) => return None,
    })
}

/// A root's content as a deep copy; `None` when it holds nothing.
fn content<T: ReadTxn>(txn: &T, branch: BranchPtr) -> Option<In> {
    let map = MapRef::from(branch);
    if branch.content_len == 0 && Map::len(&map, txn) == 0 {
        return None;
    }
    Some(Out::UndefinedRef(branch).as_prelim(txn))
}

/// Makes the content of every root type of `live` equal that of `version`
/// in one transaction; returns its update (Yjs v1; `[0, 0]` when nothing
/// differed).
pub fn make_equal(live: &Doc, version: &Doc) -> Bytes {
    let vtxn = version.transact();
    let wanted: Vec<(String, Option<In>)> = roots(&vtxn)
        .into_iter()
        .map(|(name, b)| {
            let c = content(&vtxn, b);
            (name, c)
        })
        .collect();
    drop(vtxn);
    // Roots the version has but the live document never had.
    for (name, c) in &wanted {
        if c.is_some() && !live.transact().root_refs().any(|(n, _)| n == name) {
            match c {
                Some(In::Map(_)) => drop(live.get_or_insert_map(name.as_str())),
                Some(In::Text(_)) => drop(live.get_or_insert_text(name.as_str())),
                Some(In::XmlText(_)) => drop(live.get_or_insert_xml_fragment(name.as_str())),
                _ => drop(live.get_or_insert_array(name.as_str())),
            }
        }
    }
    let mut txn = live.transact_mut();
    let live_roots = roots(&txn);
    for (name, branch) in live_roots {
        let want = wanted
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| c.clone());
        let have = content(&txn, branch);
        if have == want {
            continue;
        }
        set_root(&mut txn, branch, have, want);
    }
    Bytes::from(txn.encode_update_v1())
}

/// Replaces the content of one root with `want` (`None`: empties it).
fn set_root(txn: &mut yrs::TransactionMut, branch: BranchPtr, have: Option<In>, want: Option<In>) {
    let map = MapRef::from(branch);
    // Keys the version does not have (or all, when it is not a map).
    let keep: Vec<String> = match &want {
        Some(In::Map(m)) => m.keys().map(|k| k.to_string()).collect(),
        _ => Vec::new(),
    };
    let gone: Vec<String> = map
        .keys(txn)
        .filter(|k| !keep.iter().any(|w| w == k))
        .map(str::to_owned)
        .collect();
    for k in gone {
        map.remove(txn, &k);
    }
    if let (Some(In::Array(have)), Some(In::Array(want))) = (&have, &want) {
        // A sequence (array values, or the paragraphs of a ProseMirror
        // fragment): only the run between the equal items at both ends is
        // replaced, so a restore costs what changed and the untouched
        // items keep their identity.
        let (have, want) = (&have[..], &want[..]);
        let head = have.iter().zip(want).take_while(|(h, w)| h == w).count();
        let tail = have[head..]
            .iter()
            .rev()
            .zip(want[head..].iter().rev())
            .take_while(|(h, w)| h == w)
            .count();
        let array = ArrayRef::from(branch);
        let gone = have.len() - head - tail;
        if gone > 0 {
            array.remove_range(txn, head as u32, gone as u32);
        }
        for (i, item) in want[head..want.len() - tail].iter().enumerate() {
            array.insert(txn, (head + i) as u32, item.clone());
        }
        return;
    }
    if !matches!(want, Some(In::Map(_))) && branch.content_len > 0 {
        if matches!(have, Some(In::Text(_) | In::XmlText(_))) {
            // Text, with the formatting that wraps it.
            let text = TextRef::from(branch);
            let len = text.len(txn);
            text.remove_range(txn, 0, len);
        } else {
            // Values and elements.
            let array = ArrayRef::from(branch);
            let len = array.len(txn);
            array.remove_range(txn, 0, len);
        }
    }
    match want {
        None => {}
        Some(In::Map(m)) => {
            for (k, v) in m.iter() {
                let same = map
                    .get(txn, k)
                    .map(|o| o.as_prelim(txn))
                    .is_some_and(|have| &have == v);
                if !same {
                    map.insert(txn, k.clone(), v.clone());
                }
            }
        }
        Some(In::Text(delta)) => {
            TextRef::from(branch).apply_delta(txn, delta.iter().cloned());
        }
        Some(In::XmlText(x)) => {
            let text = XmlTextRef::from(branch);
            text.apply_delta(txn, x.delta.iter().cloned());
            for (k, v) in x.attributes.iter() {
                text.insert_attribute(txn, k.clone(), v.clone());
            }
        }
        Some(In::Array(items)) => {
            let array = ArrayRef::from(branch);
            for item in items.iter() {
                array.push_back(txn, item.clone());
            }
        }
        Some(In::XmlElement(e)) => {
            // A root with both keys and elements: an element's attributes
            // and children, copied as such.
            let array = ArrayRef::from(branch);
            for (k, v) in e.attributes.iter() {
                map.insert(txn, k.clone(), v.clone());
            }
            for child in e.children.iter() {
                let child: In = match child {
                    XmlIn::Element(c) => In::XmlElement(c.clone()),
                    XmlIn::Text(t) => In::XmlText(t.clone()),
                    XmlIn::Fragment(f) => In::XmlFragment(f.clone()),
                };
                array.push_back(txn, child);
            }
        }
        Some(other) => {
            let array = ArrayRef::from(branch);
            array.push_back(txn, other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::types::Attrs;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, GetString, StateVector, XmlElementPrelim, XmlFragment, XmlFragmentRef, XmlTextPrelim,
    };

    fn copy(doc: &Doc) -> Doc {
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        rebuild(&[Bytes::from(update)]).unwrap()
    }

    fn apply(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    #[test]
    fn text_map_and_array_come_back_with_formatting() {
        let client = Doc::with_client_id(7);
        let text = client.get_or_insert_text("t");
        let map = client.get_or_insert_map("m");
        let array = client.get_or_insert_array("a");
        {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            let bold = Attrs::from([("bold".into(), Any::Bool(true))]);
            text.format(&mut txn, 0, 5, bold);
            map.insert(&mut txn, "k", "v");
            map.insert(&mut txn, "nested", yrs::MapPrelim::default());
            array.push_back(&mut txn, 1);
        }
        let version = copy(&client);
        let want_delta = text.diff(&client.transact(), yrs::types::text::YChange::identity);
        {
            let mut txn = client.transact_mut();
            text.remove_range(&mut txn, 0, 6);
            text.insert(&mut txn, 0, "bye ");
            map.insert(&mut txn, "k", "changed");
            map.insert(&mut txn, "extra", 3);
            array.push_back(&mut txn, 2);
        }
        // The server's copy (roots of undefined type) restores; the update
        // reaches the client as any update would.
        let server = copy(&client);
        let update = make_equal(&server, &rebuild(&[version_update(&version)]).unwrap());
        apply(&client, &update);
        let txn = client.transact();
        assert_eq!(text.get_string(&txn), "hello world");
        assert_eq!(
            text.diff(&txn, yrs::types::text::YChange::identity),
            want_delta
        );
        assert_eq!(map.get(&txn, "k"), Some(Out::Any(Any::from("v"))));
        assert_eq!(map.get(&txn, "extra"), None);
        assert!(map.get(&txn, "nested").is_some());
        assert_eq!(array.len(&txn), 1);
        // Nothing differs any more: an empty update.
        drop(txn);
        let again = make_equal(&server, &version);
        assert_eq!(&again[..], &[0, 0]);
    }

    fn version_update(doc: &Doc) -> Bytes {
        Bytes::from(
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default()),
        )
    }

    #[test]
    fn a_tiptap_fragment_comes_back() {
        let client = Doc::with_client_id(9);
        let frag: XmlFragmentRef = client.get_or_insert_xml_fragment("default");
        {
            let mut txn = client.transact_mut();
            let p = frag.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
            p.insert_attribute(&mut txn, "textAlign", "center");
            let t = p.push_back(&mut txn, XmlTextPrelim::new("A"));
            t.format(
                &mut txn,
                0,
                1,
                Attrs::from([("bold".into(), Any::from(true))]),
            );
            let h = frag.push_back(&mut txn, XmlElementPrelim::empty("heading"));
            h.insert_attribute(&mut txn, "level", "2");
            h.push_back(&mut txn, XmlTextPrelim::new("Title"));
        }
        let want = frag.get_string(&client.transact());
        let version = copy(&client);
        {
            let mut txn = client.transact_mut();
            frag.remove_range(&mut txn, 0, 2);
            let p = frag.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
            p.push_back(&mut txn, XmlTextPrelim::new("B"));
        }
        assert_ne!(frag.get_string(&client.transact()), want);
        let server = copy(&client);
        let update = make_equal(&server, &version);
        apply(&client, &update);
        let txn = client.transact();
        assert_eq!(frag.get_string(&txn), want);
        let Some(yrs::XmlOut::Element(p)) = frag.get(&txn, 0) else {
            panic!("no paragraph")
        };
        assert_eq!(p.tag().as_ref(), "paragraph");
        assert_eq!(
            p.get_attribute(&txn, "textAlign"),
            Some(Out::Any(Any::from("center")))
        );
        let _ = version.transact().state_vector().encode_v1();
    }

    #[test]
    fn a_restore_rewrites_only_the_paragraphs_that_changed() {
        let client = Doc::with_client_id(11);
        let frag: XmlFragmentRef = client.get_or_insert_xml_fragment("default");
        {
            let mut txn = client.transact_mut();
            for i in 0..200 {
                let p = frag.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
                p.push_back(
                    &mut txn,
                    XmlTextPrelim::new(format!("paragraph {i} of the text")),
                );
            }
        }
        let want = frag.get_string(&client.transact());
        let Some(yrs::XmlOut::Element(first)) = frag.get(&client.transact(), 0) else {
            panic!("no first paragraph")
        };
        let first_before = AsRef::<Branch>::as_ref(&first).id();
        let version = copy(&client);
        {
            // One paragraph replaced by two others.
            let mut txn = client.transact_mut();
            frag.remove_range(&mut txn, 100, 1);
            let p = frag.insert(&mut txn, 100, XmlElementPrelim::empty("paragraph"));
            p.push_back(&mut txn, XmlTextPrelim::new("rewritten"));
            let p = frag.insert(&mut txn, 101, XmlElementPrelim::empty("heading"));
            p.push_back(&mut txn, XmlTextPrelim::new("added"));
        }
        let whole = version_update(&version).len();
        let server = copy(&client);
        let update = make_equal(&server, &version);
        apply(&client, &update);
        assert_eq!(frag.get_string(&client.transact()), want);
        // Only the changed run (the two new paragraphs out, the old one
        // back) is rewritten: the update is a small part of the document.
        assert!(
            update.len() * 20 < whole,
            "restore update {} bytes for a {whole}-byte document",
            update.len()
        );
        let first = frag.get(&client.transact(), 0);
        let Some(yrs::XmlOut::Element(first)) = first else {
            panic!("no first paragraph")
        };
        assert_eq!(
            AsRef::<Branch>::as_ref(&first).id(),
            first_before,
            "the first paragraph kept its identity"
        );
    }
}
