//! Store-and-forward (docs/profile.md "Store and forward"; DESIGN item 7): the items a
//! permitted caller deposited for a busy or offline callee, kept until the callee's UA
//! acknowledged their delivery (2xx to the delivering MESSAGE) or they expired.
//!
//! [`StoredItems`] is the storage trait: [`MemoryItems`] is the reference
//! implementation and engine-test double, [`SqliteItems`] the embedded default (its
//! own file `mailbox.sqlite`, every write synced before it returns). [`Mailbox`] adds
//! the policy that needs no I/O: size limit, per-callee and per-caller quotas, expiry.

pub mod memory;
pub mod sqlite;
pub mod summary;

use std::fmt;

use sha2::{Digest, Sha256};

pub use memory::MemoryItems;
pub use sqlite::SqliteItems;

/// An item's id: 128 random bits, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(pub [u8; 16]);

impl ItemId {
    /// Parses the 32-hex-digit form (either case).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ItemId({self})")
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            use fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// One stored item with its body.
#[derive(Clone, PartialEq, Eq)]
pub struct Item {
    pub id: ItemId,
    /// The callee it waits for (`user@domain`).
    pub owner: String,
    /// The authenticated caller who deposited it (`user@domain`).
    pub sender: String,
    /// The deposit's Content-Type (RFC 3428 §7).
    pub content_type: String,
    /// The deposit's attributes, normalised (`secret`, `name=value`, comma-separated).
    pub attributes: String,
    pub body: Vec<u8>,
    pub sha256: [u8; 32],
    /// Unix seconds.
    pub stored_at: u64,
    /// Unix seconds; the item is gone at this instant.
    pub expires_at: u64,
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No AORs and no body in debug output (STYLE.md rule 11).
        f.debug_struct("Item")
            .field("id", &self.id)
            .field("size", &self.body.len())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Item {
    /// An item whose digest is computed from `body`.
    #[allow(clippy::too_many_arguments)] // one field each; a builder would add nothing
    pub fn new(
        id: ItemId,
        owner: &str,
        sender: &str,
        content_type: &str,
        attributes: &str,
        body: Vec<u8>,
        stored_at: u64,
        expires_at: u64,
    ) -> Self {
        let sha256 = Sha256::digest(&body).into();
        Self {
            id,
            owner: owner.to_owned(),
            sender: sender.to_owned(),
            content_type: content_type.to_owned(),
            attributes: attributes.to_owned(),
            body,
            sha256,
            stored_at,
            expires_at,
        }
    }

    /// The bytes it stands for: its body, or for an uploaded file the file's size.
    pub fn stored_size(&self) -> u64 {
        if self.content_type == crate::upload::FILE_TYPE
            && let Ok(f) = serde_json::from_slice::<crate::upload::FileRef>(&self.body)
        {
            return f.size;
        }
        self.body.len() as u64
    }

    pub fn meta(&self) -> ItemMeta {
        ItemMeta {
            id: self.id,
            sender: self.sender.clone(),
            content_type: self.content_type.clone(),
            attributes: self.attributes.clone(),
            size: self.stored_size(),
            sha256: self.sha256,
            stored_at: self.stored_at,
            expires_at: self.expires_at,
        }
    }
}

/// What a listing shows of an item (no body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemMeta {
    pub id: ItemId,
    pub sender: String,
    pub content_type: String,
    pub attributes: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub stored_at: u64,
    pub expires_at: u64,
}

/// An announced upload that is not complete yet: invisible as an item, but counted
/// against the quotas with its announced size (crate::upload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub id: ItemId,
    pub owner: String,
    pub sender: String,
    /// The file's type as announced.
    pub content_type: String,
    pub attributes: String,
    pub name: Option<String>,
    pub size: u64,
    pub sha256: [u8; 32],
    pub created_at: u64,
    /// The upload must be complete before this (unix seconds).
    pub expires_at: u64,
}

/// Unexpired items and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub items: u64,
    pub bytes: u64,
}

/// Storage faults (I/O): the deposit is refused with 507 or 503, never a 202.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The disk (or the configured file size limit) is full.
    #[error("mailbox storage full")]
    Full,
    #[error("mailbox storage: {0}")]
    Sqlite(rusqlite::Error),
    #[error("mailbox storage: {0}")]
    Postgres(crate::pg::PgError),
    #[error("mailbox storage: cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    /// An item with this id exists (the SQLite store reports it as a constraint error).
    #[error("mailbox storage: duplicate item id")]
    Duplicate,
    /// The test double's injected failure.
    #[error("mailbox storage unavailable")]
    Unavailable,
}

impl From<rusqlite::Error> for MailboxError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Self::Full,
            _ => Self::Sqlite(e),
        }
    }
}

impl MailboxError {
    /// The answer to a deposit that could not be stored: 507 for a full store, 503
    /// otherwise; both with Retry-After seconds (RFC 3261 §21.5.4, §20.33).
    pub fn status(&self) -> (u16, &'static str, u32) {
        match self {
            Self::Full => (507, "Insufficient Storage", 600),
            _ => (503, "Service Unavailable", 30),
        }
    }
}

/// Durable items. Every method that changes the store returns only after the change
/// is on disk (the SQLite implementation commits with `synchronous=FULL`).
pub trait StoredItems: Send {
    /// Stores a new item (its id is new).
    fn put(&mut self, item: &Item) -> Result<(), MailboxError>;
    /// The item, expired or not.
    fn get(&mut self, id: &ItemId) -> Result<Option<Item>, MailboxError>;
    /// Unexpired items of `owner`, oldest first, at most `limit`.
    fn list(
        &mut self,
        owner: &str,
        unix_now: u64,
        limit: usize,
    ) -> Result<Vec<ItemMeta>, MailboxError>;
    /// Deletes an item; `false` when it was not there.
    fn delete(&mut self, id: &ItemId) -> Result<bool, MailboxError>;
    /// Unexpired items of `owner` (not upload slots): how many and their bytes. Asked
    /// for every REGISTER (engine::mwi), so a store may answer without listing.
    fn waiting(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        let all = self.list(owner, unix_now, usize::MAX)?;
        Ok(Usage {
            items: all.len() as u64,
            bytes: all.iter().map(|m| m.size).sum(),
        })
    }
    /// Unexpired items waiting for `owner`.
    fn usage_of_owner(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError>;
    /// Unexpired items deposited by `sender`.
    fn usage_of_sender(&mut self, sender: &str, unix_now: u64) -> Result<Usage, MailboxError>;
    /// Deletes items and upload slots that expired at or before `unix_now`; how many.
    fn purge_expired(&mut self, unix_now: u64) -> Result<usize, MailboxError>;
    /// Stores an upload slot (its id is new); counted in the usage until it ends.
    fn put_slot(&mut self, slot: &Slot) -> Result<(), MailboxError>;
    fn get_slot(&mut self, id: &ItemId) -> Result<Option<Slot>, MailboxError>;
    /// Replaces the slot of `item.id` by `item` in one transaction; `false` when the
    /// slot is gone (expired, or completed before).
    fn complete_slot(&mut self, item: &Item) -> Result<bool, MailboxError>;
    /// Another connection of this proxy (the deposit writer's) committed an item for
    /// `owner`: a store that keeps which owners have items waiting adds it now, not
    /// when it next notices the other connection's commit.
    fn learn_owner(&mut self, _owner: &str) {}
}

/// Limits of the store (config `[store]`, docs/operations.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Largest body of one item (413 above).
    pub max_item_bytes: u64,
    /// Largest announced upload (413 above).
    pub max_upload_bytes: u64,
    /// Items and bytes waiting for one callee (486 "Mailbox Full" above).
    pub callee_items: u64,
    pub callee_bytes: u64,
    /// Items and bytes one caller has waiting anywhere (507 "Sender Quota Exceeded").
    pub caller_items: u64,
    pub caller_bytes: u64,
    /// Lifetime of an item, seconds (default 7 days).
    pub expiry_secs: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_item_bytes: 60_000,
            max_upload_bytes: 50 * 1024 * 1024,
            callee_items: 100,
            callee_bytes: 200 * 1024 * 1024,
            caller_items: 50,
            caller_bytes: 100 * 1024 * 1024,
            expiry_secs: 7 * 24 * 3600,
        }
    }
}

/// The `[store]` settings (docs/operations.md "Store and forward").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Off: `Request-Disposition: queue` is ignored and nothing is stored.
    pub enabled: bool,
    pub quotas: Quotas,
    /// Cap of `mailbox.sqlite` in bytes (0: none); past it deposits get 507.
    pub max_file_bytes: u64,
    /// The HTTP listener for large uploads (crate::upload); none: uploads refused.
    pub http_listen: Option<std::net::SocketAddr>,
    /// The listener's base URL as callers reach it (default `http://<http_listen>`).
    pub http_base: Option<String>,
    /// How long an announced upload may take.
    pub upload_window_secs: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            quotas: Quotas::default(),
            max_file_bytes: 1024 * 1024 * 1024,
            http_listen: None,
            http_base: None,
            upload_window_secs: 24 * 3600,
        }
    }
}

/// Why a deposit is refused by policy (no I/O fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLarge,
    MailboxFull,
    SenderQuota,
}

impl Refusal {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Self::TooLarge => (413, "Request Entity Too Large"),
            Self::MailboxFull => (486, "Mailbox Full"),
            Self::SenderQuota => (507, "Sender Quota Exceeded"),
        }
    }
}

/// The quota decision for a new item of `size` bytes (at most `max`), given what is
/// already stored.
pub fn check_quota(
    q: &Quotas,
    (size, max): (u64, u64),
    callee: Usage,
    caller: Usage,
) -> Result<(), Refusal> {
    if size > max {
        return Err(Refusal::TooLarge);
    }
    if callee.items >= q.callee_items || callee.bytes.saturating_add(size) > q.callee_bytes {
        return Err(Refusal::MailboxFull);
    }
    if caller.items >= q.caller_items || caller.bytes.saturating_add(size) > q.caller_bytes {
        return Err(Refusal::SenderQuota);
    }
    Ok(())
}

/// A deposit that was not stored.
#[derive(Debug, thiserror::Error)]
pub enum DepositError {
    #[error("deposit refused: {0:?}")]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] MailboxError),
}

/// Where the engine sends deposits, so that their write (a committed transaction with
/// an fsync, `synchronous=FULL`, or a PostgreSQL round trip) runs off the engine's
/// thread. The engine answers a deposit only with its outcome, which comes after the
/// item is durable (or was refused): a 202 still means the item survives kill -9.
pub trait DepositWriter: Send {
    /// Queues `job`; [`QueueFull`](crate::location::QueueFull) when too many wait (the
    /// engine answers 503).
    fn submit(&mut self, job: DepositJob) -> Result<(), crate::location::QueueFull>;
    /// A finished job's outcome, if any (in no particular order), by its ticket.
    fn poll_done(&mut self) -> Option<(u64, Result<(), DepositError>)>;
}

/// One deposit for a [`DepositWriter`]: [`Mailbox::deposit`] of `item` at `unix_now`.
#[derive(Debug)]
pub struct DepositJob {
    pub ticket: u64,
    pub item: Item,
    pub unix_now: u64,
}

/// The store with its policy.
pub struct Mailbox {
    store: Box<dyn StoredItems>,
    pub quotas: Quotas,
    /// Large uploads (crate::upload): the listener's URL signer and the upload window
    /// in seconds; the engine takes them over with the mailbox.
    pub uploads: Option<(crate::upload::Tokens, u64)>,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new(Box::new(MemoryItems::default()), Quotas::default())
    }
}

impl Mailbox {
    pub fn new(store: Box<dyn StoredItems>, quotas: Quotas) -> Self {
        Self {
            store,
            quotas,
            uploads: None,
        }
    }

    /// The deposit writer's connection stored an item for `owner` (see
    /// [`StoredItems::learn_owner`]).
    pub fn learn_owner(&mut self, owner: &str) {
        self.store.learn_owner(owner);
    }

    /// Checks the quotas and stores `item`; `Ok` only once it is durable.
    pub fn deposit(&mut self, item: &Item, unix_now: u64) -> Result<(), DepositError> {
        let size = item.body.len() as u64;
        if size > self.quotas.max_item_bytes {
            return Err(DepositError::Refused(Refusal::TooLarge));
        }
        let callee = self.store.usage_of_owner(&item.owner, unix_now)?;
        let caller = self.store.usage_of_sender(&item.sender, unix_now)?;
        let max = self.quotas.max_item_bytes;
        check_quota(&self.quotas, (size, max), callee, caller).map_err(DepositError::Refused)?;
        self.store.put(item)?;
        Ok(())
    }

    /// Checks the quotas for an announced upload and stores its slot.
    pub fn open_slot(&mut self, slot: &Slot, unix_now: u64) -> Result<(), DepositError> {
        let callee = self.store.usage_of_owner(&slot.owner, unix_now)?;
        let caller = self.store.usage_of_sender(&slot.sender, unix_now)?;
        let max = self.quotas.max_upload_bytes;
        check_quota(&self.quotas, (slot.size, max), callee, caller)
            .map_err(DepositError::Refused)?;
        self.store.put_slot(slot)?;
        Ok(())
    }

    /// The slot if it exists and has not expired.
    pub fn get_slot(&mut self, id: &ItemId, unix_now: u64) -> Result<Option<Slot>, MailboxError> {
        Ok(self.store.get_slot(id)?.filter(|s| s.expires_at > unix_now))
    }

    pub fn complete_slot(&mut self, item: &Item) -> Result<bool, MailboxError> {
        self.store.complete_slot(item)
    }

    /// The item if it exists and has not expired.
    pub fn get(&mut self, id: &ItemId, unix_now: u64) -> Result<Option<Item>, MailboxError> {
        Ok(self.store.get(id)?.filter(|i| i.expires_at > unix_now))
    }

    pub fn list(
        &mut self,
        owner: &str,
        unix_now: u64,
        limit: usize,
    ) -> Result<Vec<ItemMeta>, MailboxError> {
        self.store.list(owner, unix_now, limit)
    }

    /// The items waiting for `owner` (uploads under way not included).
    pub fn waiting(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        self.store.waiting(owner, unix_now)
    }

    pub fn delete(&mut self, id: &ItemId) -> Result<bool, MailboxError> {
        self.store.delete(id)
    }

    pub fn purge_expired(&mut self, unix_now: u64) -> Result<usize, MailboxError> {
        self.store.purge_expired(unix_now)
    }
}

#[cfg(test)]
mod tests;
