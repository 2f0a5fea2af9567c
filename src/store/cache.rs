//! Short-lived copies of the rows every request reads and hardly anything writes: a
//! tenant by API key, a conversation with its channel's type and status, a channel's
//! route targets.
//!
//! Without them each message costs three lookups before its transaction begins. An
//! entry lives [`TTL`] at most, so what another node or a CLI process changes takes
//! effect within about a second (a disabled tenant, channel or route); what this node
//! changes takes effect at once, because every write of the store that could make
//! an entry wrong bumps the cache's generation, and entries of an older generation
//! are not used. A lookup records the generation before it reads the database, so a
//! read that races a write is stored as already stale.
//!
//! Only found rows are kept: a miss or an error reads the database again next time.
//! The maps are bounded; a full one is emptied and starts over.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{ConversationContext, RouteTarget};
use crate::domain::{ChannelId, ConversationId, Tenant, TenantId};

/// Longest an entry is used.
pub const TTL: Duration = Duration::from_secs(1);
/// Most entries of one map.
const CAPACITY: usize = 50_000;

/// The generation a lookup started in, to store its result under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Generation(u64);

/// The caches of one store (shared by its clones).
#[derive(Debug, Default)]
pub(super) struct ReadCache {
    generation: AtomicU64,
    pub(super) tenants: Map<String, Tenant>,
    pub(super) contexts: Map<(TenantId, ConversationId), ConversationContext>,
    pub(super) routes: Map<(TenantId, ChannelId), Vec<RouteTarget>>,
}

impl ReadCache {
    /// The current generation: read it before the database.
    pub(super) fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// Makes every entry stale. Called by the store after each write that could.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// One bounded map of entries with their generation and time.
#[derive(Debug)]
pub(super) struct Map<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    generation: Generation,
    stored: Instant,
}

impl<K, V> Default for Map<K, V> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    /// The entry for `key` if it is of generation `now` and younger than [`TTL`].
    pub(super) fn get(&self, key: &K, now: Generation) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(key)?;
        (entry.generation == now && entry.stored.elapsed() < TTL).then(|| entry.value.clone())
    }

    /// Keeps `value`, read in generation `read_in`.
    pub(super) fn put(&self, key: K, value: V, read_in: Generation) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                value,
                generation: read_in,
                stored: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_serve_their_generation_until_the_ttl() {
        let cache = ReadCache::default();
        let g = cache.generation();
        cache
            .routes
            .put((TenantId::new(), ChannelId::new()), vec![], g);
        let key = (TenantId::new(), ChannelId::new());
        cache.routes.put(key, vec![], g);
        assert!(cache.routes.get(&key, cache.generation()).is_some());
        cache.invalidate();
        assert!(cache.routes.get(&key, cache.generation()).is_none());
    }

    #[test]
    fn a_read_that_raced_a_write_is_stored_stale() {
        let cache = ReadCache::default();
        let key = (TenantId::new(), ChannelId::new());
        let before = cache.generation();
        cache.invalidate(); // a write lands while the read is in flight
        cache.routes.put(key, vec![], before);
        assert!(cache.routes.get(&key, cache.generation()).is_none());
    }

    #[test]
    fn a_full_map_starts_over() {
        let map: Map<u32, u32> = Map::default();
        let g = Generation(0);
        for i in 0..CAPACITY as u32 {
            map.put(i, i, g);
        }
        map.put(u32::MAX, 1, g);
        assert_eq!(map.get(&u32::MAX, g), Some(1));
        assert_eq!(map.get(&0, g), None);
    }
}
