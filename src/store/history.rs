//! Version history, as every store keeps it.
//!
//! A version is a restorable state of a room's document. What is stored
//! for version `n` is either a *delta* — the room's document encoded as a
//! Yjs v1 update from the state vector of version `n − 1`
//! (`encode_state_as_update_v1(sv(n−1))`: the structs added since, and
//! of the delete set only the deletions version `n − 1` does not hold, so
//! a delta costs what changed, not the document's age) — or a *full* state (the whole document as one
//! update). Applying, in order, the full state at or before `n` and every
//! delta after it up to `n` to an empty document rebuilds version `n`
//! exactly. The room stores a full state every `--version-snapshot-every`
//! versions, or sooner when the deltas since the last full state would
//! weigh more than one full state, so a rebuild reads at most about two
//! documents' worth of bytes.
//!
//! Deleting a version (by request or by retention) merges its stored
//! update into the next version's (`yrs::merge_updates_v1`): the next one
//! stays rebuildable, and storage stays proportional to what changed.
//!
//! The algorithms here are written once over [`Rows`] (one room's
//! versions inside one store transaction); each store implements `Rows`
//! (memory: a map; redb: two tables in the writer's transaction;
//! PostgreSQL: a transaction holding the room's advisory lock).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use yrs::updates::encoder::Encode;
use yrs::IdSet;

use super::StoreError;

/// Why a version was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionKind {
    /// After the idle window or the longest interval (`--version-idle-ms`,
    /// `--version-every-ms`).
    Auto,
    /// Asked for by a client, with a name.
    Named,
    /// Made by a restore (`restored_from` says of which version).
    Restore,
}

impl VersionKind {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionKind::Auto => "auto",
            VersionKind::Named => "named",
            VersionKind::Restore => "restore",
        }
    }

    fn code(self) -> i16 {
        match self {
            VersionKind::Auto => 0,
            VersionKind::Named => 1,
            VersionKind::Restore => 2,
        }
    }

    fn from_code(code: i16) -> VersionKind {
        match code {
            1 => VersionKind::Named,
            2 => VersionKind::Restore,
            _ => VersionKind::Auto,
        }
    }
}

/// Someone who changed the document since the previous version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionAuthor {
    /// User id from the token.
    pub user: String,
    /// Display name, when known from presence.
    pub name: Option<String>,
}

/// What a version is, without its stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// Per-room counter, from 1; never reused in a room.
    pub id: u64,
    /// When it was made, ms since the Unix epoch.
    pub time: u64,
    /// Name (named versions).
    pub name: Option<String>,
    /// Why it was made.
    pub kind: VersionKind,
    /// Restores: the version restored.
    pub restored_from: Option<u64>,
    /// Who changed the document since the previous version.
    pub authors: Vec<VersionAuthor>,
    /// Bytes stored for this version (its update).
    pub bytes: u64,
}

/// One stored version: its metadata, its state vector, and whether its
/// update is a full state (else a delta from the previous version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRow {
    /// Metadata.
    pub meta: VersionMeta,
    /// The document's state vector at this version (Yjs v1).
    pub sv: Vec<u8>,
    /// The update is the whole document.
    pub full: bool,
}

/// The latest version, as a room needs it to make the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionHead {
    /// Its id.
    pub id: u64,
    /// Its state vector (Yjs v1): the base of the next delta.
    pub sv: Vec<u8>,
    /// Versions since the last full state, both included: a rebuild of
    /// this version reads this many updates.
    pub chain_len: u64,
    /// Bytes of the deltas among them (the full state not counted).
    pub chain_bytes: u64,
}

/// A version to add.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The id of the latest version the update was made against (`None`:
    /// the room had none). The store refuses the add ([`Added::Stale`])
    /// when its latest version is another one.
    pub after: Option<u64>,
    /// When, ms since the epoch.
    pub time: u64,
    /// Name.
    pub name: Option<String>,
    /// Kind.
    pub kind: VersionKind,
    /// Restores: which version.
    pub restored_from: Option<u64>,
    /// Authors since the previous version.
    pub authors: Vec<VersionAuthor>,
    /// State vector at this version.
    pub sv: Vec<u8>,
    /// The update: a full state or a delta from `after`'s state vector.
    pub data: Bytes,
    /// `data` is a full state.
    pub full: bool,
    /// Named versions the room may hold (`--max-named-versions`): a named
    /// version past it is refused ([`Added::TooManyNamed`]).
    pub max_named: usize,
}

/// What [`Rows`]-level add did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Stored.
    Added(VersionMeta),
    /// Another version was added meanwhile (another node): read the head
    /// again and make the update again.
    Stale,
    /// A named version, but the room holds `max_named` already.
    TooManyNamed,
}

/// A page of versions, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionPage {
    /// The versions.
    pub versions: Vec<VersionMeta>,
    /// The `before` of the next page, when more follow.
    pub next: Option<u64>,
}

/// One room's versions inside one store transaction.
#[allow(async_fn_in_trait)] // used with concrete types only
pub trait Rows {
    /// The row with the largest id.
    async fn last(&mut self) -> Result<Option<VersionRow>, StoreError>;
    /// The row `id`.
    async fn get(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError>;
    /// Rows with ids below `before` (all when `None`), newest first, at
    /// most `limit`.
    async fn before(
        &mut self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionRow>, StoreError>;
    /// The first row with an id above `id`.
    async fn next_after(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError>;
    /// The stored update of version `id`.
    async fn data(&mut self, id: u64) -> Result<Option<Bytes>, StoreError>;
    /// Writes a row and, when given, its update.
    async fn put(&mut self, row: &VersionRow, data: Option<&[u8]>) -> Result<(), StoreError>;
    /// Removes a row and its update.
    async fn remove(&mut self, id: u64) -> Result<(), StoreError>;
    /// Takes the next id of the room (a counter that deletions never
    /// lower).
    async fn next_id(&mut self) -> Result<u64, StoreError>;
}

fn corrupt(room: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        room: room.to_owned(),
        detail: detail.into(),
    }
}

/// The latest version and the length of its chain.
pub async fn head<R: Rows>(rows: &mut R) -> Result<Option<VersionHead>, StoreError> {
    let Some(last) = rows.last().await? else {
        return Ok(None);
    };
    let mut head = VersionHead {
        id: last.meta.id,
        sv: last.sv.clone(),
        chain_len: 1,
        chain_bytes: if last.full { 0 } else { last.meta.bytes },
    };
    if last.full {
        return Ok(Some(head));
    }
    let mut before = last.meta.id;
    'walk: loop {
        let page = rows.before(Some(before), 64).await?;
        if page.is_empty() {
            break;
        }
        for row in page {
            head.chain_len += 1;
            before = row.meta.id;
            if row.full {
                break 'walk;
            }
            head.chain_bytes += row.meta.bytes;
        }
    }
    Ok(Some(head))
}

/// Adds a version unless another was added since `new.after`.
pub async fn add<R: Rows>(rows: &mut R, new: NewVersion) -> Result<Added, StoreError> {
    let last = rows.last().await?.map(|r| r.meta.id);
    if last != new.after {
        return Ok(Added::Stale);
    }
    if new.kind == VersionKind::Named && count_named(rows).await? >= new.max_named {
        return Ok(Added::TooManyNamed);
    }
    let id = rows.next_id().await?;
    let row = VersionRow {
        meta: VersionMeta {
            id,
            time: new.time,
            name: new.name,
            kind: new.kind,
            restored_from: new.restored_from,
            authors: new.authors,
            bytes: new.data.len() as u64,
        },
        sv: new.sv,
        // The first version of a room has nothing to be a delta of.
        full: new.full || new.after.is_none(),
    };
    rows.put(&row, Some(&new.data)).await?;
    Ok(Added::Added(row.meta))
}

/// How many named versions the room holds.
async fn count_named<R: Rows>(rows: &mut R) -> Result<usize, StoreError> {
    let (mut named, mut before) = (0, None);
    loop {
        let page = rows.before(before, 256).await?;
        let Some(last) = page.last() else {
            return Ok(named);
        };
        before = Some(last.meta.id);
        named += page
            .iter()
            .filter(|r| r.meta.kind == VersionKind::Named)
            .count();
    }
}

/// Newest first, `limit` versions below `before`.
pub async fn list<R: Rows>(
    rows: &mut R,
    before: Option<u64>,
    limit: usize,
) -> Result<VersionPage, StoreError> {
    let mut page = rows.before(before, limit + 1).await?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|r| r.meta.id)
    } else {
        None
    };
    Ok(VersionPage {
        versions: page.into_iter().map(|r| r.meta).collect(),
        next,
    })
}

/// The updates that rebuild version `id` from an empty document, oldest
/// first (a full state, then deltas); `None` for an unknown version.
pub async fn chain<R: Rows>(
    rows: &mut R,
    room: &str,
    id: u64,
) -> Result<Option<(VersionMeta, Vec<Bytes>)>, StoreError> {
    let Some(row) = rows.get(id).await? else {
        return Ok(None);
    };
    let meta = row.meta.clone();
    let mut ids = vec![id];
    if !row.full {
        let mut before = id;
        'walk: loop {
            let page = rows.before(Some(before), 64).await?;
            if page.is_empty() {
                return Err(corrupt(
                    room,
                    format!("version {id} has no full state before it"),
                ));
            }
            for r in page {
                ids.push(r.meta.id);
                before = r.meta.id;
                if r.full {
                    break 'walk;
                }
            }
        }
    }
    let mut parts = Vec::with_capacity(ids.len());
    for v in ids.into_iter().rev() {
        let data = rows
            .data(v)
            .await?
            .ok_or_else(|| corrupt(room, format!("version {v} has no stored update")))?;
        parts.push(data);
    }
    Ok(Some((meta, parts)))
}

/// Deletes version `id`, merging its update into the next version's so
/// that it stays rebuildable. `false` for an unknown version.
pub async fn delete<R: Rows>(rows: &mut R, room: &str, id: u64) -> Result<bool, StoreError> {
    let Some(row) = rows.get(id).await? else {
        return Ok(false);
    };
    if let Some(mut next) = rows.next_after(id).await? {
        if !next.full {
            let mine = rows
                .data(id)
                .await?
                .ok_or_else(|| corrupt(room, format!("version {id} has no stored update")))?;
            let theirs = rows.data(next.meta.id).await?.ok_or_else(|| {
                corrupt(
                    room,
                    format!("version {} has no stored update", next.meta.id),
                )
            })?;
            let merged = yrs::merge_updates_v1([mine.as_ref(), theirs.as_ref()])
                .map_err(|e| corrupt(room, format!("merging versions {id}: {e}")))?;
            next.full = row.full;
            next.meta.bytes = merged.len() as u64;
            rows.put(&next, Some(&merged)).await?;
        }
    }
    rows.remove(id).await?;
    Ok(true)
}

/// Retention: deletes versions other than named ones beyond the newest
/// `keep` of them, and those older than `max_age_ms` (0: no age limit)
/// at `now`; the latest version is always kept. Returns how many went.
pub async fn prune<R: Rows>(
    rows: &mut R,
    room: &str,
    keep: usize,
    max_age_ms: u64,
    now: u64,
) -> Result<usize, StoreError> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = rows.before(before, 256).await?;
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.meta.id);
        all.extend(page.into_iter().map(|r| r.meta));
    }
    let latest = all.first().map(|m| m.id);
    let mut doomed = Vec::new();
    let mut seen = 0usize;
    for m in &all {
        if m.kind == VersionKind::Named || Some(m.id) == latest {
            if m.kind != VersionKind::Named {
                seen += 1;
            }
            continue;
        }
        seen += 1;
        let too_many = seen > keep;
        let too_old = max_age_ms > 0 && now.saturating_sub(m.time) > max_age_ms;
        if too_many || too_old {
            doomed.push(m.id);
        }
    }
    // Oldest first: each merge then goes into a version that stays, or
    // that goes next.
    for id in doomed.iter().rev() {
        delete(rows, room, *id).await?;
    }
    Ok(doomed.len())
}

/// What [`encode_version`] made.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The update to store.
    pub data: Bytes,
    /// It is the whole document (else a delta from the head).
    pub full: bool,
    /// The version's delete set, as a rebuild of it holds (the base of the
    /// next delta's deletions); `None` when not known (a delta made
    /// without the head's delete set).
    pub delete_set: Option<IdSet>,
}

/// What to store for a new version of the document read through `txn`,
/// whose latest stored version is `head` with delete set `head_ds`: a
/// delta from the head's state vector, or the whole document (`full`)
/// when there is no head, the chain since the last whole document is
/// `every` versions long, or the deltas would weigh more than
/// `size_bound` (about one whole document).
///
/// A delta holds the structs added since the head and only the deletions
/// the head does not hold (`head_ds`): Yjs encodes the document's whole
/// delete set, which would make every delta repeat every deletion ever
/// made. Without `head_ds` (not known) the delta keeps the whole delete
/// set: larger, still exact.
pub fn encode_version<T: yrs::ReadTxn>(
    txn: &T,
    head: Option<&VersionHead>,
    head_ds: Option<&IdSet>,
    every: u64,
    size_bound: u64,
) -> Encoded {
    use yrs::updates::decoder::Decode;
    let base = head
        .filter(|h| h.chain_len < every)
        .and_then(|h| yrs::StateVector::decode_v1(&h.sv).ok());
    let whole = || {
        let data = txn.encode_state_as_update_v1(&yrs::StateVector::default());
        let delete_set = split_deletions(&data).map(|(_, ds)| ds);
        Encoded {
            data: Bytes::from(data),
            full: true,
            delete_set,
        }
    };
    let Some(base) = base else {
        return whole();
    };
    let mut delta = txn.encode_state_as_update_v1(&base);
    let mut delete_set = None;
    if let Some(prev) = head_ds {
        if let Some((at, ds)) = split_deletions(&delta) {
            delta.truncate(at);
            delta.extend_from_slice(&ds.diff(prev).encode_v1());
            delete_set = Some(ds.merge(prev));
        }
    }
    let chain = head.map_or(0, |h| h.chain_bytes) + delta.len() as u64;
    if chain > size_bound {
        whole()
    } else {
        Encoded {
            data: Bytes::from(delta),
            full: false,
            delete_set,
        }
    }
}

/// Where the delete set of a v1 update starts, and the delete set.
fn split_deletions(update: &[u8]) -> Option<(usize, IdSet)> {
    use yrs::updates::decoder::Decode;
    let at = crate::protocol::yupdate::delete_set_offset_v1(update).ok()?;
    let ds = IdSet::decode_v1(update.get(at..)?).ok()?;
    Some((at, ds))
}

/// The delete set of a rebuilt version (the base of the next delta's
/// deletions).
pub fn delete_set_of(doc: &yrs::Doc) -> IdSet {
    use yrs::{ReadTxn, Transact};
    doc.transact().snapshot().delete_set
}

/// Runs a [`Rows`] algorithm whose rows never wait (memory, redb).
pub fn now<T>(
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    use futures_util::FutureExt;
    fut.now_or_never().unwrap_or_else(|| {
        Err(StoreError::Io(
            "a synchronous store operation waited".into(),
        ))
    })
}

/// `kind` as stored in a database column.
pub fn kind_code(kind: VersionKind) -> i16 {
    kind.code()
}

/// The kind of a database column value.
pub fn kind_of(code: i16) -> VersionKind {
    VersionKind::from_code(code)
}

/// Encodes a row for a key-value store.
pub fn encode_row(row: &VersionRow) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(row).map_err(|e| StoreError::Io(format!("encoding a version: {e}")))
}

/// Decodes a row written by [`encode_row`].
pub fn decode_row(room: &str, bytes: &[u8]) -> Result<VersionRow, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| corrupt(room, format!("version row: {e}")))
}

/// A store's version operations, as the trait exposes them.
#[derive(Debug, Clone)]
pub enum VersionOp {
    /// [`head`].
    Head,
    /// [`add`].
    Add(NewVersion),
    /// [`list`].
    List {
        /// Page end.
        before: Option<u64>,
        /// Page size.
        limit: usize,
    },
    /// [`chain`].
    Chain(u64),
    /// [`delete`].
    Delete(u64),
    /// [`prune`].
    Prune {
        /// Count kept.
        keep: usize,
        /// Age limit, 0 for none.
        max_age_ms: u64,
        /// Now, ms since the epoch.
        now: u64,
    },
}

/// The answer to a [`VersionOp`].
#[derive(Debug, Clone)]
pub enum VersionOut {
    /// [`head`].
    Head(Option<VersionHead>),
    /// [`add`].
    Added(Added),
    /// [`list`].
    Page(VersionPage),
    /// [`chain`].
    Chain(Option<(VersionMeta, Vec<Bytes>)>),
    /// [`delete`]: found or not.
    Deleted(bool),
    /// [`prune`]: how many went.
    Pruned(usize),
}

/// Runs `op` on `rows`.
pub async fn run<R: Rows>(
    rows: &mut R,
    room: &str,
    op: VersionOp,
) -> Result<VersionOut, StoreError> {
    Ok(match op {
        VersionOp::Head => VersionOut::Head(head(rows).await?),
        VersionOp::Add(new) => VersionOut::Added(add(rows, new).await?),
        VersionOp::List { before, limit } => VersionOut::Page(list(rows, before, limit).await?),
        VersionOp::Chain(id) => VersionOut::Chain(chain(rows, room, id).await?),
        VersionOp::Delete(id) => VersionOut::Deleted(delete(rows, room, id).await?),
        VersionOp::Prune {
            keep,
            max_age_ms,
            now,
        } => VersionOut::Pruned(prune(rows, room, keep, max_age_ms, now).await?),
    })
}

/// One room's versions in memory (the memory store; tests).
#[derive(Debug, Default, Clone)]
pub struct MemRows {
    /// Rows and updates by id.
    pub rows: std::collections::BTreeMap<u64, (VersionRow, Bytes)>,
    /// The last id handed out.
    pub last_id: u64,
}

impl Rows for MemRows {
    async fn last(&mut self) -> Result<Option<VersionRow>, StoreError> {
        Ok(self.rows.values().next_back().map(|(r, _)| r.clone()))
    }
    async fn get(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError> {
        Ok(self.rows.get(&id).map(|(r, _)| r.clone()))
    }
    async fn before(
        &mut self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionRow>, StoreError> {
        Ok(self
            .rows
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .take(limit)
            .map(|(_, (r, _))| r.clone())
            .collect())
    }
    async fn next_after(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError> {
        Ok(self
            .rows
            .range(id.saturating_add(1)..)
            .next()
            .map(|(_, (r, _))| r.clone()))
    }
    async fn data(&mut self, id: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self.rows.get(&id).map(|(_, d)| d.clone()))
    }
    async fn put(&mut self, row: &VersionRow, data: Option<&[u8]>) -> Result<(), StoreError> {
        let data = match data {
            Some(d) => Bytes::copy_from_slice(d),
            None => self
                .rows
                .get(&row.meta.id)
                .map(|(_, d)| d.clone())
                .unwrap_or_default(),
        };
        self.rows.insert(row.meta.id, (row.clone(), data));
        Ok(())
    }
    async fn remove(&mut self, id: u64) -> Result<(), StoreError> {
        self.rows.remove(&id);
        Ok(())
    }
    async fn next_id(&mut self) -> Result<u64, StoreError> {
        self.last_id += 1;
        Ok(self.last_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

    fn text(doc: &Doc) -> String {
        let t = doc.get_or_insert_text("t");
        let txn = doc.transact();
        t.get_string(&txn)
    }

    fn rebuild(parts: &[Bytes]) -> Doc {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            for p in parts {
                txn.apply_update(Update::decode_v1(p).unwrap()).unwrap();
            }
        }
        doc
    }

    /// The delete set of the version the test made last, by id (as the
    /// room keeps it).
    type Cache = Option<(u64, IdSet)>;

    /// Adds the live document's state as a version, as the room does.
    fn snap(rows: &mut MemRows, doc: &Doc, every: u64, cache: &mut Cache) -> u64 {
        let head = now(head(rows)).unwrap();
        let txn = doc.transact();
        let sv = txn.state_vector();
        let head_ds = cache
            .as_ref()
            .filter(|(id, _)| head.as_ref().map(|h| h.id) == Some(*id))
            .map(|(_, ds)| ds);
        let Encoded {
            data,
            full,
            delete_set,
        } = encode_version(&txn, head.as_ref(), head_ds, every, u64::MAX);
        let new = NewVersion {
            after: head.map(|h| h.id),
            time: 0,
            name: None,
            kind: VersionKind::Auto,
            restored_from: None,
            authors: vec![],
            sv: sv.encode_v1(),
            data,
            full,
            max_named: usize::MAX,
        };
        match now(add(rows, new)).unwrap() {
            Added::Added(m) => {
                *cache = delete_set.map(|ds| (m.id, ds));
                m.id
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_version_rebuilds_after_deletions_and_pruning() {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        let mut rows = MemRows::default();
        let mut cache = None;
        let mut expected = Vec::new();
        for i in 0..20u32 {
            {
                let mut txn = doc.transact_mut();
                let len = t.get_string(&txn).len() as u32;
                t.insert(&mut txn, len, &format!("w{i} "));
                if i % 3 == 2 {
                    t.remove_range(&mut txn, 0, 3);
                }
            }
            let id = snap(&mut rows, &doc, 4, &mut cache);
            expected.push((id, text(&doc)));
        }
        let check = |rows: &mut MemRows, expected: &[(u64, String)]| {
            for (id, want) in expected {
                let (_, parts) = now(chain(rows, "r", *id)).unwrap().unwrap();
                assert_eq!(&text(&rebuild(&parts)), want, "version {id}");
            }
        };
        check(&mut rows, &expected);
        // Deleting in the middle (a delta, a full state) keeps the others.
        for gone in [6u64, 5, 9, 1] {
            assert!(now(delete(&mut rows, "r", gone)).unwrap());
            expected.retain(|(id, _)| *id != gone);
            check(&mut rows, &expected);
        }
        assert!(!now(delete(&mut rows, "r", 6)).unwrap());
        let pruned = now(prune(&mut rows, "r", 5, 0, 0)).unwrap();
        assert_eq!(pruned, expected.len() - 5);
        expected.drain(..pruned);
        check(&mut rows, &expected);
        // Ids are never reused (and the head's delete set is rebuilt, as
        // after a restart).
        let mut cache = None;
        let id = snap(&mut rows, &doc, 4, &mut cache);
        assert_eq!(id, 21);
    }

    #[test]
    fn named_versions_are_never_pruned_and_stale_adds_are_refused() {
        let mut rows = MemRows::default();
        let mk = |after, kind, time| NewVersion {
            after,
            time,
            name: None,
            kind,
            restored_from: None,
            authors: vec![],
            sv: vec![0],
            data: Bytes::from_static(&[0, 0]),
            full: true,
            max_named: usize::MAX,
        };
        let mut last = None;
        for i in 0..10u64 {
            let kind = if i % 4 == 0 {
                VersionKind::Named
            } else {
                VersionKind::Auto
            };
            let Added::Added(m) = now(add(&mut rows, mk(last, kind, i * 1000))).unwrap() else {
                panic!("stale")
            };
            last = Some(m.id);
        }
        assert_eq!(
            now(add(&mut rows, mk(Some(3), VersionKind::Auto, 0))).unwrap(),
            Added::Stale
        );
        // Age: older than 4.5 s at t = 9 s → versions made before 4.5 s.
        now(prune(&mut rows, "r", 100, 4500, 9000)).unwrap();
        let ids: Vec<u64> = rows.rows.keys().copied().collect();
        assert_eq!(ids, vec![1, 5, 6, 7, 8, 9, 10]);
        now(prune(&mut rows, "r", 1, 0, 9000)).unwrap();
        let ids: Vec<u64> = rows.rows.keys().copied().collect();
        assert_eq!(ids, vec![1, 5, 9, 10]);
        let page = now(list(&mut rows, None, 2)).unwrap();
        assert_eq!(
            page.versions.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![10, 9]
        );
        assert_eq!(page.next, Some(9));
        let page = now(list(&mut rows, page.next, 2)).unwrap();
        assert_eq!(
            page.versions.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![5, 1]
        );
        assert_eq!(page.next, None);
    }

    /// A long session deleting as much as it types: each delta holds what
    /// changed since the previous version, not every deletion ever made
    /// (Yjs encodes the whole delete set); every version still rebuilds,
    /// also after deletions merged deltas, and the delete set kept for the
    /// head is the one a rebuild gives (what the room computes after a
    /// restart).
    #[test]
    fn deltas_stay_the_size_of_what_changed_in_a_long_session() {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        {
            let mut txn = doc.transact_mut();
            t.insert(&mut txn, 0, &"abcdefghij".repeat(40));
        }
        let mut rows = MemRows::default();
        let mut cache = None;
        let mut expected = Vec::new();
        snap(&mut rows, &doc, 1000, &mut cache);
        for i in 0..200u32 {
            {
                let mut txn = doc.transact_mut();
                // Delete one char at a spread-out place, type one: the
                // delete set keeps growing in separate ranges.
                let at = (i * 7) % 390;
                t.remove_range(&mut txn, at, 1);
                t.insert(&mut txn, (at + 3) % 390, "x");
            }
            let id = snap(&mut rows, &doc, 1000, &mut cache);
            expected.push((id, text(&doc)));
        }
        let sizes: Vec<u64> = rows
            .rows
            .values()
            .skip(1)
            .map(|(r, _)| r.meta.bytes)
            .collect();
        let (first, last) = (sizes[0], *sizes.last().unwrap());
        println!(
            "delta bytes: first {first}, last {last}, max {}",
            sizes.iter().max().unwrap()
        );
        assert!(
            sizes.iter().all(|s| *s <= first + 8),
            "deltas grew with the session: first {first}, last {last}, all {sizes:?}"
        );
        for (id, want) in expected.iter().step_by(17) {
            let (_, parts) = now(chain(&mut rows, "r", *id)).unwrap().unwrap();
            assert_eq!(&text(&rebuild(&parts)), want, "version {id}");
        }
        let (head_id, ds) = cache.clone().unwrap();
        let (_, parts) = now(chain(&mut rows, "r", head_id)).unwrap().unwrap();
        assert_eq!(delete_set_of(&rebuild(&parts)), ds);
        // Deleting versions merges trimmed deltas: the others still rebuild.
        for gone in (2..200).step_by(3) {
            assert!(now(delete(&mut rows, "r", gone)).unwrap());
            expected.retain(|(id, _)| *id != gone);
        }
        for (id, want) in &expected {
            let (_, parts) = now(chain(&mut rows, "r", *id)).unwrap().unwrap();
            assert_eq!(&text(&rebuild(&parts)), want, "version {id}");
        }
    }
}
